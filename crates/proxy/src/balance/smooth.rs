//! Smooth weighted round robin (nginx's algorithm): every pick adds each entry's weight to its
//! credit and takes the largest, so weights 5:1:1 give a a b a c a a, not a a a a a b c.

/// Smooth weighted round robin over weighted items.
#[derive(Debug, Clone)]
pub(super) struct Smooth<T> {
    entries: Vec<(T, i64, i64)>,
    total: i64,
}

impl<T: Clone> Smooth<T> {
    pub(super) fn new(entries: Vec<(T, i64)>) -> Self {
        let entries: Vec<(T, i64, i64)> = entries
            .into_iter()
            .filter(|(_, w)| *w > 0)
            .map(|(t, w)| (t, w, 0))
            .collect();
        let total = entries.iter().map(|(_, w, _)| w).sum();
        Smooth { entries, total }
    }

    pub(super) fn pick(&mut self) -> Option<T> {
        for e in &mut self.entries {
            e.2 += e.1;
        }
        // The largest credit; the first such entry on a tie.
        let (i, _) = self
            .entries
            .iter()
            .enumerate()
            .max_by_key(|(i, e)| (e.2, std::cmp::Reverse(*i)))?;
        self.entries[i].2 -= self.total;
        Some(self.entries[i].0.clone())
    }

    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
