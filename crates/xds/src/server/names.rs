//! Resource names and versions as delta streams keep them: every stream that holds or
//! subscribes to a name shares one allocation of it, and a version is the `u64` its 16 hex
//! digits spell. At 2,000 proxies each holding some 3,000 resources, owned `String` names and
//! versions in two maps per type were 1.5 GB of the control plane in `bench/xds-scale`.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock, Mutex};

/// A resource name shared between streams.
pub(super) type Name = Arc<str>;

/// The names some stream holds, with the size of the set after its last sweep.
struct Interned {
    names: HashSet<Name>,
    swept_at: usize,
}

static NAMES: LazyLock<Mutex<Interned>> = LazyLock::new(|| {
    Mutex::new(Interned {
        names: HashSet::new(),
        swept_at: 0,
    })
});

/// Names below this many are never swept (a sweep would free little).
const SWEEP_FLOOR: usize = 4096;

/// The shared allocation of `name`. Names no stream holds any more are dropped when the set
/// has doubled since the last sweep, so the cost of sweeping stays proportional to the
/// interning that made it necessary.
pub(super) fn intern(name: &str) -> Name {
    let mut interned = NAMES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(n) = interned.names.get(name) {
        return Arc::clone(n);
    }
    if interned.names.len() >= SWEEP_FLOOR.max(interned.swept_at * 2) {
        interned.names.retain(|n| Arc::strong_count(n) > 1);
        interned.swept_at = interned.names.len();
    }
    let n: Name = Arc::from(name);
    interned.names.insert(Arc::clone(&n));
    n
}

pub(super) use crate::resources::version_id;

/// The 16 lowercase hex digits of a version id (what [`version_id`] read, for versions the
/// builders made), on the stack: set versions hash them for every changed resource of every
/// push, and `format!` would allocate each time.
pub(super) fn version_digits(id: u64) -> [u8; 16] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    for (i, d) in digits.iter_mut().enumerate() {
        *d = HEX[((id >> (60 - 4 * i)) & 0xf) as usize];
    }
    digits
}

/// The text of a version id.
#[cfg(test)]
pub(super) fn version_text(id: u64) -> String {
    String::from_utf8_lossy(&version_digits(id)).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_allocation_per_name_while_held() {
        let a = intern("outbound|80||echo.demo");
        let b = intern("outbound|80||echo.demo");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(&*a, "outbound|80||echo.demo");
    }

    #[test]
    fn versions_round_trip_and_foreign_ones_differ() {
        assert_eq!(
            version_text(version_id("00ab00cd00ef0012")),
            "00ab00cd00ef0012"
        );
        assert_ne!(version_id("v1"), version_id("v2"));
        assert_ne!(version_text(version_id("v1")), "v1");
        for id in [0, 1, 0xabc, u64::MAX, 0x0123_4567_89ab_cdef] {
            assert_eq!(version_text(id), format!("{id:016x}"));
        }
    }
}
