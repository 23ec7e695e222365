//! The modules' allocator: small blocks from free lists kept per size, everything else from
//! talc.
//!
//! A request allocates about two dozen times, almost all small and short-lived (the host's copy
//! of a header map or a property, a plan's edits, a header value), and with talc alone each
//! allocation and its free cost ~870 Wasm instructions. A block of up to 4 KiB is rounded up
//! to a power of two and, once freed, kept on its size's list for the next one: an allocation or
//! a free is then a few loads and stores. Blocks are never handed back to talc, so what the lists
//! hold is bounded by the most blocks of each size ever live at once (some KiB: a header map
//! is one block of 1-4 KiB).
//!
//! Envoy runs each VM on one thread, and a module built without Wasm atomics cannot have
//! another; the lists are not locked.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::UnsafeCell;
use std::ptr;

/// Block sizes, each class twice the one before.
const SMALLEST: usize = 16;
const CLASSES: usize = 9; // 16, 32, ... 4096 bytes
/// Every pooled block is aligned to this (its size's multiple).
const ALIGN: usize = 16;

/// `inner` behind one free list per block size.
pub struct Pooled<A> {
    inner: A,
    /// The head of each class's list; a free block's first word points at the next.
    free: UnsafeCell<[*mut u8; CLASSES]>,
}

impl<A> Pooled<A> {
    pub const fn new(inner: A) -> Pooled<A> {
        Pooled { inner, free: UnsafeCell::new([ptr::null_mut(); CLASSES]) }
    }
}

// SAFETY: only where a module has one thread (wasm32 without atomics): the lists are never
// touched from two threads.
#[cfg(all(target_arch = "wasm32", not(target_feature = "atomics")))]
#[allow(unsafe_code)]
unsafe impl<A: Sync> Sync for Pooled<A> {}

/// The class of a block for `layout`, if it is pooled.
fn class(size: usize, align: usize) -> Option<usize> {
    if align > ALIGN || size > SMALLEST << (CLASSES - 1) {
        return None;
    }
    // ceil(log2(size)), from 4 (16 bytes) on.
    let bits = (usize::BITS - size.saturating_sub(1).leading_zeros()) as usize;
    Some(bits.saturating_sub(SMALLEST.trailing_zeros() as usize))
}

fn class_layout(class: usize) -> Layout {
    // A power of two from 16 to 4096, aligned to 16: always a valid layout.
    Layout::from_size_align(SMALLEST << class, ALIGN).unwrap_or(Layout::new::<[u128; 1]>())
}

#[allow(unsafe_code)]
// SAFETY (the whole impl): a pooled block is one `inner` gave for its class's layout, so it
// has room and alignment for any layout of its class; it is on at most one list at a time, and
// while on a list only its first word is used.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Pooled<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class(layout.size(), layout.align()) else {
            // SAFETY: as the caller promises.
            return unsafe { self.inner.alloc(layout) };
        };
        // SAFETY: one thread, and no call below re-enters this allocator.
        let free = unsafe { &mut *self.free.get() };
        let Some(head) = free.get_mut(class) else { return ptr::null_mut() };
        if head.is_null() {
            // SAFETY: a non-zero size.
            return unsafe { self.inner.alloc(class_layout(class)) };
        }
        let block = *head;
        // SAFETY: a free block's first word is the next free block.
        *head = unsafe { block.cast::<*mut u8>().read() };
        block
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        let Some(class) = class(layout.size(), layout.align()) else {
            // SAFETY: as the caller promises.
            return unsafe { self.inner.dealloc(block, layout) };
        };
        // SAFETY: one thread, and no call below re-enters this allocator.
        let free = unsafe { &mut *self.free.get() };
        if let Some(head) = free.get_mut(class) {
            // SAFETY: the block is ours again, at least a word long and aligned for one.
            unsafe { block.cast::<*mut u8>().write(*head) };
            *head = block;
        }
    }

    unsafe fn realloc(&self, block: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let (old, new) = (class(layout.size(), layout.align()), class(new_size, layout.align()));
        match (old, new) {
            // The block has room already (a `Vec` growing within its class).
            (Some(old), Some(new)) if old == new => block,
            // SAFETY: as the caller promises.
            (None, None) => unsafe { self.inner.realloc(block, layout, new_size) },
            _ => {
                // SAFETY: `new_size` with the old alignment is a valid layout (the caller's promise).
                let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
                // SAFETY: as above.
                let moved = unsafe { self.alloc(new_layout) };
                if !moved.is_null() {
                    // SAFETY: both blocks are live and hold at least the smaller size.
                    unsafe { ptr::copy_nonoverlapping(block, moved, layout.size().min(new_size)) };
                    // SAFETY: the old block, with its own layout.
                    unsafe { self.dealloc(block, layout) };
                }
                moved
            }
        }
    }
}

#[cfg(test)]
#[allow(unsafe_code, clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::alloc::System;
    use std::cell::Cell;

    /// The system allocator, counting what reaches it.
    #[derive(Default)]
    struct Counted {
        allocs: Cell<usize>,
        frees: Cell<usize>,
    }

    // SAFETY: hands every call to the system allocator.
    unsafe impl GlobalAlloc for Counted {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            self.allocs.set(self.allocs.get() + 1);
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
            self.frees.set(self.frees.get() + 1);
            unsafe { System.dealloc(block, layout) }
        }
    }

    fn layout(size: usize) -> Layout {
        Layout::from_size_align(size, 8).unwrap()
    }

    #[test]
    fn sizes_fall_in_their_power_of_two() {
        let cases = [(0, 0), (1, 0), (16, 0), (17, 1), (32, 1), (33, 2), (256, 4), (257, 5), (4096, 8)];
        for (size, want) in cases {
            assert_eq!(class(size, 8), Some(want), "{size}");
        }
        assert_eq!(class(4097, 8), None);
        assert_eq!(class(16, 32), None, "stricter alignment than a block has");
    }

    #[test]
    fn a_freed_block_serves_the_next_of_its_size_without_the_inner_allocator() {
        let pool = Pooled::new(Counted::default());
        unsafe {
            let a = pool.alloc(layout(24));
            let b = pool.alloc(layout(30));
            assert!(!a.is_null() && !b.is_null() && a != b);
            assert_eq!(a as usize % ALIGN, 0);
            pool.dealloc(a, layout(24));
            assert_eq!(pool.alloc(layout(20)), a, "the freed 32-byte block again");
            assert_eq!(pool.inner.allocs.get(), 2);
            assert_eq!(pool.inner.frees.get(), 0, "small blocks stay in the pool");
            // Large blocks go straight through.
            let big = pool.alloc(layout(5000));
            pool.dealloc(big, layout(5000));
            assert_eq!((pool.inner.allocs.get(), pool.inner.frees.get()), (3, 1));
        }
    }

    #[test]
    fn realloc_keeps_the_bytes_across_classes_and_the_block_within_one() {
        let pool = Pooled::new(Counted::default());
        unsafe {
            let a = pool.alloc(layout(17));
            for i in 0..17 {
                a.add(i).write(i as u8);
            }
            assert_eq!(pool.realloc(a, layout(17), 32), a, "room within the class");
            let b = pool.realloc(a, layout(32), 100);
            assert_ne!(b, a);
            let c = pool.realloc(b, layout(100), 6000);
            let d = pool.realloc(c, layout(6000), 40);
            for i in 0..17 {
                assert_eq!(d.add(i).read(), i as u8, "byte {i}");
            }
            pool.dealloc(d, layout(40));
            // The 32-byte block `a` went back to its list when it moved: it serves again.
            assert_eq!(pool.alloc(layout(32)), a);
        }
    }
}
