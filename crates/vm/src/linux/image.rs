//! The arm64 Linux `Image` header: the 64 bytes at the start of the file that say
//! how far from a 2 MiB-aligned base the kernel wants to be loaded, how much
//! memory it occupies once running (its BSS included), and how it was built.
//! The layout is the kernel's `Documentation/arch/arm64/booting.rst`.

use thiserror::Error;

/// Bytes in the header.
pub const HEADER_BYTES: usize = 64;
/// The magic at offset 0x38: "ARM\x64", little-endian.
pub const MAGIC: u32 = 0x644D_5241;
/// The text offset a header without an image size implies (kernels before 3.17).
const LEGACY_TEXT_OFFSET: u64 = 0x8_0000;
/// The text offset is an offset into the kernel's 2 MiB-aligned region.
const TEXT_OFFSET_LIMIT: u64 = 2 << 20;

const OFF_TEXT_OFFSET: usize = 0x08;
const OFF_IMAGE_SIZE: usize = 0x10;
const OFF_FLAGS: usize = 0x18;
const OFF_MAGIC: usize = 0x38;

/// flags bit 0: the kernel is big-endian.
const FLAG_BIG_ENDIAN: u64 = 1 << 0;
/// flags bits 2:1: the kernel's page size.
const FLAG_PAGE_SIZE_SHIFT: u32 = 1;
/// flags bit 3: the kernel may be placed anywhere in memory (else the 2 MiB
/// base should be as close as possible to the start of RAM).
const FLAG_PLACE_ANYWHERE: u64 = 1 << 3;

/// The page size an Image was built for (flags bits 2:1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelPageSize {
    /// The header does not say (0).
    Unspecified,
    /// 4 KiB pages (1).
    Size4K,
    /// 16 KiB pages (2).
    Size16K,
    /// 64 KiB pages (3).
    Size64K,
}

/// What the header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageHeader {
    /// Offset from the 2 MiB-aligned base at which the image must be loaded.
    pub text_offset: u64,
    /// Bytes the kernel occupies from its load address, BSS included: never
    /// less than the file (a header without a size gets the file's length).
    pub image_size: u64,
    /// The page size the kernel was built for.
    pub page_size: KernelPageSize,
    /// Whether the kernel may be placed anywhere in RAM.
    pub place_anywhere: bool,
}

/// Why a file is not an arm64 Linux Image apf can boot.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ImageHeaderError {
    /// Shorter than the header.
    #[error("the kernel is {len} bytes, shorter than the {HEADER_BYTES}-byte arm64 Image header")]
    TooShort {
        /// File length.
        len: usize,
    },
    /// No "ARM\x64" at 0x38.
    #[error(
        "the kernel has magic {found:#010x} at offset 0x38, not {MAGIC:#010x} (\"ARM\\x64\"): give an uncompressed arm64 Image"
    )]
    BadMagic {
        /// What is there.
        found: u32,
    },
    /// A big-endian kernel.
    #[error(
        "the kernel is big-endian (Image flags {flags:#x}): apf runs little-endian kernels only"
    )]
    BigEndian {
        /// The flags field.
        flags: u64,
    },
    /// Built for pages the interpreter's MMU does not translate.
    #[error(
        "the kernel is built for {0:?} pages (Image flags): apf's MMU has 4 KiB pages only; give a 4 KiB-page kernel"
    )]
    PageSize(KernelPageSize),
    /// A text offset that is not below 2 MiB or not page-aligned.
    #[error("the kernel's text_offset {0:#x} is not a 4 KiB-aligned offset below 2 MiB")]
    TextOffset(u64),
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

impl ImageHeader {
    /// Reads the header of `image` (the whole file: its length matters when the
    /// header has no image size).
    pub fn parse(image: &[u8]) -> Result<ImageHeader, ImageHeaderError> {
        if image.len() < HEADER_BYTES {
            return Err(ImageHeaderError::TooShort { len: image.len() });
        }
        let mut magic = [0u8; 4];
        magic.copy_from_slice(&image[OFF_MAGIC..OFF_MAGIC + 4]);
        let magic = u32::from_le_bytes(magic);
        if magic != MAGIC {
            return Err(ImageHeaderError::BadMagic { found: magic });
        }
        let text_offset = u64_at(image, OFF_TEXT_OFFSET);
        let image_size = u64_at(image, OFF_IMAGE_SIZE);
        let flags = u64_at(image, OFF_FLAGS);
        let file_len = image.len() as u64;
        if image_size == 0 {
            // booting.rst: before 3.17 the header had no size, the flags were
            // not defined and the offset was 0x80000.
            return Ok(ImageHeader {
                text_offset: LEGACY_TEXT_OFFSET,
                image_size: file_len,
                page_size: KernelPageSize::Unspecified,
                place_anywhere: false,
            });
        }
        if flags & FLAG_BIG_ENDIAN != 0 {
            return Err(ImageHeaderError::BigEndian { flags });
        }
        let page_size = match (flags >> FLAG_PAGE_SIZE_SHIFT) & 0b11 {
            0 => KernelPageSize::Unspecified,
            1 => KernelPageSize::Size4K,
            2 => KernelPageSize::Size16K,
            _ => KernelPageSize::Size64K,
        };
        if matches!(page_size, KernelPageSize::Size16K | KernelPageSize::Size64K) {
            return Err(ImageHeaderError::PageSize(page_size));
        }
        if text_offset >= TEXT_OFFSET_LIMIT || !text_offset.is_multiple_of(apf_abi::PAGE_SIZE) {
            return Err(ImageHeaderError::TextOffset(text_offset));
        }
        // A header that claims less than the file would have the file's tail
        // overwritten by whatever is placed after it.
        Ok(ImageHeader {
            text_offset,
            image_size: image_size.max(file_len),
            page_size,
            place_anywhere: flags & FLAG_PLACE_ANYWHERE != 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header as a 6.x kernel has it: text_offset 0, LE, 4 KiB pages,
    /// placeable anywhere; followed by `body` bytes of code.
    fn image(image_size: u64, flags: u64, body: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; HEADER_BYTES + body];
        // code0: a branch over the header (b +0x40 is what MZ-less Images use).
        bytes[0..4].copy_from_slice(&0x1400_0010u32.to_le_bytes());
        bytes[OFF_IMAGE_SIZE..OFF_IMAGE_SIZE + 8].copy_from_slice(&image_size.to_le_bytes());
        bytes[OFF_FLAGS..OFF_FLAGS + 8].copy_from_slice(&flags.to_le_bytes());
        bytes[OFF_MAGIC..OFF_MAGIC + 4].copy_from_slice(&MAGIC.to_le_bytes());
        bytes
    }

    /// Flags of a modern LE 4 KiB kernel placeable anywhere.
    const MODERN: u64 = 0b1010;

    #[test]
    fn a_modern_header_parses() {
        let h = ImageHeader::parse(&image(0x2_0000, MODERN, 0x100)).unwrap();
        assert_eq!(
            h,
            ImageHeader {
                text_offset: 0,
                image_size: 0x2_0000,
                page_size: KernelPageSize::Size4K,
                place_anywhere: true,
            }
        );
    }

    #[test]
    fn the_text_offset_is_read_and_checked() {
        let mut bytes = image(0x2_0000, 0b0010, 0);
        bytes[OFF_TEXT_OFFSET..OFF_TEXT_OFFSET + 8].copy_from_slice(&0x8_0000u64.to_le_bytes());
        let h = ImageHeader::parse(&bytes).unwrap();
        assert_eq!((h.text_offset, h.place_anywhere), (0x8_0000, false));
        bytes[OFF_TEXT_OFFSET..OFF_TEXT_OFFSET + 8].copy_from_slice(&0x20_0000u64.to_le_bytes());
        assert_eq!(
            ImageHeader::parse(&bytes),
            Err(ImageHeaderError::TextOffset(0x20_0000))
        );
        bytes[OFF_TEXT_OFFSET..OFF_TEXT_OFFSET + 8].copy_from_slice(&0x123u64.to_le_bytes());
        assert_eq!(
            ImageHeader::parse(&bytes),
            Err(ImageHeaderError::TextOffset(0x123))
        );
    }

    #[test]
    fn the_kernel_occupies_at_least_its_file() {
        let h = ImageHeader::parse(&image(0x10, MODERN, 0x1000)).unwrap();
        assert_eq!(h.image_size, (HEADER_BYTES + 0x1000) as u64);
    }

    #[test]
    fn a_header_without_a_size_is_a_pre_3_17_kernel() {
        let h = ImageHeader::parse(&image(0, 0, 0x200)).unwrap();
        assert_eq!(h.text_offset, LEGACY_TEXT_OFFSET);
        assert_eq!(h.image_size, (HEADER_BYTES + 0x200) as u64);
    }

    #[test]
    fn bad_headers_are_refused_with_what_is_wrong() {
        let good = image(0x2_0000, MODERN, 0);
        assert_eq!(
            ImageHeader::parse(&good[..63]),
            Err(ImageHeaderError::TooShort { len: 63 })
        );
        assert_eq!(
            ImageHeader::parse(&[]),
            Err(ImageHeaderError::TooShort { len: 0 })
        );
        let mut gzip = good.clone();
        gzip[OFF_MAGIC..OFF_MAGIC + 4].copy_from_slice(&[0x1f, 0x8b, 8, 0]);
        let e = ImageHeader::parse(&gzip).unwrap_err();
        assert_eq!(e, ImageHeaderError::BadMagic { found: 0x0008_8b1f });
        assert!(e.to_string().contains("0x00088b1f"), "{e}");
        let e = ImageHeader::parse(&image(0x2_0000, MODERN | FLAG_BIG_ENDIAN, 0)).unwrap_err();
        assert_eq!(e, ImageHeaderError::BigEndian { flags: 0b1011 });
        assert!(e.to_string().contains("big-endian"), "{e}");
        assert_eq!(
            ImageHeader::parse(&image(0x2_0000, 0b0100, 0)),
            Err(ImageHeaderError::PageSize(KernelPageSize::Size16K))
        );
        assert_eq!(
            ImageHeader::parse(&image(0x2_0000, 0b0110, 0)),
            Err(ImageHeaderError::PageSize(KernelPageSize::Size64K))
        );
        for e in [
            ImageHeader::parse(&good[..10]).unwrap_err(),
            ImageHeader::parse(&gzip).unwrap_err(),
        ] {
            assert!(!e.to_string().contains('\n'), "one line: {e}");
        }
    }
}
