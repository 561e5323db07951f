//! The platform state the vCPUs share: who holds which APF shared block.

use apf_abi::Gpa;
use apf_abi::platform::{RAM_BASE, UART_BASE, UART_INTID};
use apf_host::gic::{Gic, SpiLine};
use apf_host::machine::Machine;
use apf_host::uart::Pl011;
use std::sync::Arc;

const RAM: u64 = 1 << 20;

fn machine(vcpus: usize) -> Machine {
    let gic = Arc::new(Gic::new(vcpus).unwrap());
    let line = SpiLine::new(Arc::clone(&gic), UART_INTID).unwrap();
    let uart = Pl011::new(Box::new(std::io::sink()), Box::new(line));
    Machine::new(gic, uart, RAM_BASE..RAM_BASE + RAM)
}

#[test]
fn a_block_claimed_by_one_vcpu_is_refused_to_another_until_given_back() {
    let m = machine(2);
    let block = RAM_BASE + 0x1000;
    // No record in between: the claim itself must reserve the block, or two
    // ENABLEs racing on two vCPUs would both be granted it.
    assert!(m.claim_shared_block(0, Gpa(block), 16));
    assert!(!m.claim_shared_block(1, Gpa(block), 16));
    assert_eq!(m.shared_block_holder(Gpa(block + 15)), Some(0));
    assert_eq!(m.shared_block_holder(Gpa(block + 16)), None);
    assert!(
        m.claim_shared_block(0, Gpa(block), 16),
        "its holder may claim it again"
    );
    assert!(
        m.claim_shared_block(1, Gpa(block + 64), 16),
        "the next block is free"
    );
    m.release_shared_block(0, Gpa(block));
    assert!(
        !m.claim_shared_block(1, Gpa(block), 16),
        "claimed twice, released once: still held"
    );
    m.release_shared_block(0, Gpa(block));
    assert_eq!(m.shared_block_holder(Gpa(block)), None);
    assert!(
        m.claim_shared_block(1, Gpa(block), 16),
        "given back, it can be taken"
    );
}

#[test]
fn blocks_conflict_when_their_ranges_overlap_not_only_at_the_same_address() {
    let m = machine(2);
    let block = RAM_BASE + 0x1000;
    assert!(m.claim_shared_block(0, Gpa(block), 16));
    assert!(
        !m.claim_shared_block(1, Gpa(block + 8), 16),
        "overlaps its end"
    );
    assert!(
        !m.claim_shared_block(1, Gpa(block - 8), 16),
        "overlaps its start"
    );
    assert!(!m.claim_shared_block(1, Gpa(block - 8), 32), "contains it");
    assert!(m.claim_shared_block(1, Gpa(block + 16), 16), "adjacent");
    assert!(
        m.claim_shared_block(1, Gpa(block - 16), 16),
        "adjacent below"
    );
    assert_eq!(m.shared_block_holder(Gpa(block - 1)), Some(1));
}

#[test]
fn a_vcpu_may_hold_its_old_block_while_it_moves_to_a_new_one() {
    let m = machine(2);
    let (a, b) = (RAM_BASE + 0x1000, RAM_BASE + 0x2000);
    assert!(m.claim_shared_block(0, Gpa(a), 16));
    assert!(m.claim_shared_block(0, Gpa(b), 16));
    assert!(!m.claim_shared_block(1, Gpa(a), 16), "not given up yet");
    m.release_shared_block(0, Gpa(a));
    assert!(m.claim_shared_block(1, Gpa(a), 16));
    assert_eq!(m.shared_block_holder(Gpa(b)), Some(0));
}

#[test]
fn a_block_outside_ram_or_for_no_vcpu_is_never_claimed() {
    let m = machine(1);
    assert!(!m.claim_shared_block(0, Gpa(RAM_BASE - 64), 16));
    assert!(
        !m.claim_shared_block(0, Gpa(RAM_BASE + RAM - 8), 16),
        "runs past the end"
    );
    assert!(!m.claim_shared_block(0, Gpa(UART_BASE), 16));
    assert!(!m.claim_shared_block(0, Gpa(u64::MAX - 8), 16), "wraps");
    assert!(!m.claim_shared_block(1, Gpa(RAM_BASE), 16), "no vCPU 1");
}
