//! [`Replies`]: how many reply frames a [`PooledFramed`](crate::PooledFramed) still expects.

/// The count of reply frames expected: one per request frame by default (none on a
/// `write_only` pool), or what `expect_replies` said for the next request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Replies {
    /// Reply frames expected and not received yet.
    owed: usize,
    /// Set by `expect_replies`, for the next request frame only.
    next: Option<usize>,
    /// Reply frames per request frame when `next` is not set.
    per_request: usize,
}

impl Replies {
    /// Nothing expected yet but `owed`, `per_request` per request frame from now on.
    pub(crate) fn new(owed: usize, per_request: usize) -> Self {
        Replies {
            owed,
            next: None,
            per_request,
        }
    }

    /// The next request frame gets `n` replies instead of `per_request`.
    pub(crate) fn expect_next(&mut self, n: usize) {
        self.next = Some(n);
    }

    /// A request frame was queued for sending.
    pub(crate) fn sent(&mut self) {
        let n = self.next.take().unwrap_or(self.per_request);
        self.owed = self.owed.saturating_add(n);
    }

    /// A reply frame was decoded. One more than expected is not an error: it was read.
    pub(crate) fn received(&mut self) {
        self.owed = self.owed.saturating_sub(1);
    }

    /// Reply frames expected and not received yet.
    pub(crate) fn owed(&self) -> usize {
        self.owed
    }
}

#[cfg(test)]
mod tests {
    use super::Replies;

    #[test]
    fn expect_replies_lasts_one_send() {
        let mut r = Replies::new(0, 1);
        r.expect_next(3);
        r.sent();
        r.sent();
        assert_eq!(r.owed(), 4);
        r.expect_next(0);
        r.sent();
        assert_eq!(r.owed(), 4);
        for _ in 0..5 {
            r.received();
        }
        assert_eq!(r.owed(), 0, "an extra frame does not underflow");
        let mut write_only = Replies::new(1, 0);
        write_only.sent();
        assert_eq!(write_only.owed(), 1);
    }
}
