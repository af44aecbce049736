//! A value one op leaves for another: a forward pass for its backward (the
//! columns a convolution kept, a max pool's argmax, batch statistics), or a
//! gradient op for the op that called it (parameter gradients that do not
//! fit candle's one-output custom ops).

use std::sync::{Arc, Mutex};

/// A slot shared by clones: one side puts a value, the other takes or reads it.
pub struct HandOff<T>(Arc<Mutex<Option<T>>>);

impl<T> HandOff<T> {
    /// Leaves `value`, replacing what was there.
    pub fn put(&self, value: T) {
        *self.lock() = Some(value);
    }

    /// Takes the value out, leaving the slot empty.
    pub fn take(&self) -> Option<T> {
        self.lock().take()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<T>> {
        // A panic elsewhere cannot leave the Option half-written.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl<T: Clone> HandOff<T> {
    /// A copy of the value, leaving it in place.
    pub fn get(&self) -> Option<T> {
        self.lock().clone()
    }
}

impl<T> Default for HandOff<T> {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(None)))
    }
}

impl<T> Clone for HandOff<T> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl<T> std::fmt::Debug for HandOff<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.lock().is_some() { "HandOff(full)" } else { "HandOff(empty)" })
    }
}

#[cfg(test)]
mod tests {
    use super::HandOff;

    #[test]
    fn a_value_put_by_one_clone_is_taken_by_another_once() {
        let a: HandOff<Vec<u32>> = HandOff::default();
        let b = a.clone();
        assert!(b.take().is_none());
        a.put(vec![1, 2]);
        assert_eq!(b.get(), Some(vec![1, 2]));
        assert_eq!(b.take(), Some(vec![1, 2]));
        assert!(a.take().is_none(), "taken once");
    }
}
