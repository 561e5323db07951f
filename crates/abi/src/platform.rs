//! The virtual platform's memory map: QEMU `virt` addresses, so an image built for
//! `qemu-system-aarch64 -M virt,gic-version=3` runs on apf unchanged.

/// Start of guest RAM.
pub const RAM_BASE: u64 = 0x4000_0000;
/// Where a flat image is loaded and entered (EL1h, x0 = 0), as QEMU `-kernel` does.
pub const IMAGE_LOAD_ADDR: u64 = 0x4008_0000;
/// GICv3 distributor.
pub const GICD_BASE: u64 = 0x0800_0000;
/// Size of the distributor frame.
pub const GICD_SIZE: u64 = 0x1_0000;
/// GICv3 redistributors: one RD frame plus one SGI frame per vCPU.
pub const GICR_BASE: u64 = 0x080A_0000;
/// Bytes of redistributor space per vCPU.
pub const GICR_STRIDE: u64 = 0x2_0000;
/// Offset of the SGI/PPI frame inside a vCPU's redistributor.
pub const GICR_SGI_OFFSET: u64 = 0x1_0000;
/// PL011 UART.
pub const UART_BASE: u64 = 0x0900_0000;
/// Size of the UART frame.
pub const UART_SIZE: u64 = 0x1000;
/// SPI INTID of the UART (SPI 1 on QEMU virt).
pub const UART_INTID: u32 = 33;
