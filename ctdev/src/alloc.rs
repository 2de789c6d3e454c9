//! The shipped binary's allocator (musl builds; docs/DESIGN.md, "Process
//! start: musl with dlmalloc"): dlmalloc for everything below
//! [`DIRECT_BYTES`], and an allocation of its own straight from the kernel
//! (`mmap`, given back by `munmap` at free) for anything larger, as glibc's
//! `malloc` and C dlmalloc do past their mmap threshold.
//!
//! The Rust port of dlmalloc takes even its largest chunks from its
//! segments and gives a segment back only when it is wholly free. A large
//! transient buffer (the daemon reads and parses the kernel's BTF, about
//! 25 MB, when it loads the eBPF program) would then stay in the process
//! for good, and the daemon locks its memory (`mlockall`), so those pages
//! would stay resident: 35 MB of RSS instead of 10 in two of three churn
//! benches. Sent to their own mappings, such buffers go back at free.
//!
//! Which side owns a block is a pure function of its [`Layout`], which
//! `GlobalAlloc` passes again at `dealloc` and `realloc`: no header, no
//! lookup.

use std::alloc::{GlobalAlloc, Layout};
use std::ptr;

/// Blocks of this size or more (with an alignment a page satisfies) get
/// their own mapping: dlmalloc's C default mmap threshold.
pub const DIRECT_BYTES: usize = 256 * 1024;

const PAGE: usize = 4096;

/// dlmalloc below [`DIRECT_BYTES`], `mmap` at or above.
pub struct Allocator;

fn direct(layout: &Layout) -> bool {
    layout.size() >= DIRECT_BYTES && layout.align() <= PAGE
}

fn pages(size: usize) -> usize {
    size.div_ceil(PAGE) * PAGE
}

/// A new private anonymous mapping of at least `size` bytes (zero-filled,
/// page aligned), or null.
fn map(size: usize) -> *mut u8 {
    // SAFETY: a new anonymous mapping at an address the kernel chooses;
    // no existing memory is touched.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            pages(size),
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        ptr::null_mut()
    } else {
        p.cast()
    }
}

// SAFETY: every block is handed out once and taken back by the side that
// made it ([`direct`] of the same layout): dlmalloc's global instance
// (which locks) or a mapping of exactly `pages(size)` bytes.
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if direct(&layout) {
            map(layout.size())
        } else {
            // SAFETY: the caller's contract (non-zero size) is passed on.
            unsafe { dlmalloc::GlobalDlmalloc.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if direct(&layout) {
            map(layout.size())
        } else {
            // SAFETY: as in `alloc`.
            unsafe { dlmalloc::GlobalDlmalloc.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        if direct(&layout) {
            // SAFETY: `block` is a mapping `map` made for this layout's
            // size (the caller passes the layout it was allocated with).
            unsafe {
                libc::munmap(block.cast(), pages(layout.size()));
            }
        } else {
            // SAFETY: `block` came from dlmalloc with this layout.
            unsafe { dlmalloc::GlobalDlmalloc.dealloc(block, layout) }
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees `new_size`, rounded up to the
        // alignment, does not overflow `isize`.
        let new = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (direct(&layout), direct(&new)) {
            // SAFETY: `block` came from dlmalloc with `layout`.
            (false, false) => unsafe { dlmalloc::GlobalDlmalloc.realloc(block, layout, new_size) },
            (true, true) => {
                // SAFETY: `block` is a mapping of `pages(layout.size())`
                // bytes; the kernel moves or resizes it whole.
                let p = unsafe {
                    libc::mremap(
                        block.cast(),
                        pages(layout.size()),
                        pages(new_size),
                        libc::MREMAP_MAYMOVE,
                    )
                };
                if p == libc::MAP_FAILED {
                    ptr::null_mut()
                } else {
                    p.cast()
                }
            }
            _ => {
                // Across the threshold: a new block from the other side.
                // SAFETY: `new` has a non-zero size (the caller's contract).
                let p = unsafe { self.alloc(new) };
                if !p.is_null() {
                    // SAFETY: both blocks are valid for the smaller size
                    // and distinct; the old one is freed with its layout.
                    unsafe {
                        ptr::copy_nonoverlapping(block, p, layout.size().min(new_size));
                        self.dealloc(block, layout);
                    }
                }
                p
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(p: *mut u8, n: usize, seed: u8) {
        for i in 0..n {
            // SAFETY: `p` is valid for `n` bytes (test allocations).
            unsafe { *p.add(i) = seed.wrapping_add(i as u8) };
        }
    }

    fn check(p: *mut u8, n: usize, seed: u8) {
        for i in 0..n {
            // SAFETY: as in `fill`.
            assert_eq!(unsafe { *p.add(i) }, seed.wrapping_add(i as u8), "byte {i}");
        }
    }

    #[test]
    fn small_and_large_blocks_keep_their_bytes_across_realloc() {
        let a = Allocator;
        // Small → small → large → larger → small again: every transition.
        let sizes = [64, 4_000, DIRECT_BYTES + 1, 3 * DIRECT_BYTES, 1_000];
        let mut layout = Layout::from_size_align(sizes[0], 16).unwrap();
        // SAFETY: non-zero size.
        let mut p = unsafe { a.alloc(layout) };
        assert!(!p.is_null());
        fill(p, layout.size(), 7);
        for &size in &sizes[1..] {
            let kept = layout.size().min(size);
            // SAFETY: `p` was allocated with `layout`.
            p = unsafe { a.realloc(p, layout, size) };
            assert!(!p.is_null(), "realloc to {size}");
            check(p, kept, 7);
            layout = Layout::from_size_align(size, 16).unwrap();
            fill(p, size, 7);
        }
        // SAFETY: allocated with `layout`.
        unsafe { a.dealloc(p, layout) };
    }

    #[test]
    fn large_blocks_are_their_own_zeroed_mappings() {
        let a = Allocator;
        let layout = Layout::from_size_align(DIRECT_BYTES, 64).unwrap();
        // SAFETY: non-zero size.
        let p = unsafe { a.alloc_zeroed(layout) };
        assert!(!p.is_null());
        assert_eq!(p as usize % PAGE, 0, "page aligned");
        check_zero(p, layout.size());
        // SAFETY: allocated with `layout`.
        unsafe { a.dealloc(p, layout) };
        // An alignment above a page stays with dlmalloc, which honours it.
        let odd = Layout::from_size_align(DIRECT_BYTES, 2 * PAGE).unwrap();
        assert!(!direct(&odd));
        // SAFETY: non-zero size.
        let q = unsafe { a.alloc(odd) };
        assert_eq!(q as usize % (2 * PAGE), 0);
        // SAFETY: allocated with `odd`.
        unsafe { a.dealloc(q, odd) };
    }

    fn check_zero(p: *mut u8, n: usize) {
        // SAFETY: `p` is valid for `n` bytes.
        assert!((0..n).all(|i| unsafe { *p.add(i) } == 0));
    }
}
