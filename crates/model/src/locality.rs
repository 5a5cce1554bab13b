use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

/// Why a locality string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocalityError {
    /// Not `region/zone[/subzone]`.
    #[error("{0:?} is not region/zone[/subzone]")]
    Shape(String),
}

/// Where an endpoint or proxy runs: region, zone and optional subzone.
///
/// Load balancing prefers endpoints closer to the caller; see [`Locality::priority_from`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Locality {
    /// Region, e.g. `eu-west`.
    pub region: String,
    /// Zone inside the region, e.g. `eu-west-1a`.
    pub zone: String,
    /// Optional subzone (rack, node group).
    pub subzone: Option<String>,
}

impl Locality {
    /// Builds a locality from its parts.
    pub fn new(
        region: impl Into<String>,
        zone: impl Into<String>,
        subzone: Option<String>,
    ) -> Self {
        Self {
            region: region.into(),
            zone: zone.into(),
            subzone,
        }
    }

    /// The load-balancing priority of an endpoint in `self` for a caller in `caller`, numbered as
    /// Istio does: 0 same region, zone and subzone; 1 same region and zone; 2 same region;
    /// 3 otherwise. Lower is preferred.
    pub fn priority_from(&self, caller: &Locality) -> u32 {
        if self.region != caller.region {
            3
        } else if self.zone != caller.zone {
            2
        } else if self.subzone != caller.subzone {
            1
        } else {
            0
        }
    }

    /// The same locality with another zone (EndpointSlice endpoints carry only a zone).
    pub fn with_zone(&self, zone: &str) -> Self {
        if zone == self.zone {
            return self.clone();
        }
        Self {
            region: self.region.clone(),
            zone: zone.to_owned(),
            subzone: None,
        }
    }
}

impl FromStr for Locality {
    type Err = LocalityError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let valid = |p: &&str| !p.is_empty() && !p.chars().any(char::is_whitespace);
        match parts.as_slice() {
            [r, z] if valid(r) && valid(z) => Ok(Self::new(*r, *z, None)),
            [r, z, sz] if valid(r) && valid(z) && valid(sz) => {
                Ok(Self::new(*r, *z, Some((*sz).to_owned())))
            }
            _ => Err(LocalityError::Shape(s.to_owned())),
        }
    }
}

impl fmt::Display for Locality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.region, self.zone)?;
        if let Some(sz) = &self.subzone {
            write!(f, "/{sz}")?;
        }
        Ok(())
    }
}

impl Serialize for Locality {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Why a locality pattern was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocalityPatternError {
    /// An empty segment, whitespace, or more than region/zone/subzone.
    #[error(
        "{0:?} is not *, region, region/zone or region/zone/subzone (each optionally ending in /*)"
    )]
    Shape(String),
    /// A `*` anywhere but as the whole last segment.
    #[error("{0:?}: the wildcard '*' may appear once, as the last segment")]
    Wildcard(String),
}

/// A group of localities, as Istio's `localityLbSetting.distribute` writes them: `*` (every
/// locality), `region` or `region/*` (every zone of a region), `region/zone` or `region/zone/*`,
/// or one `region/zone/subzone`. It matches a locality by prefix.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LocalityPattern {
    /// Region, zone, subzone: the leading segments a matching locality must have (none: all).
    parts: Vec<String>,
}

impl LocalityPattern {
    /// Whether `locality` is in the group.
    pub fn matches(&self, locality: &Locality) -> bool {
        let have = [
            Some(locality.region.as_str()),
            Some(locality.zone.as_str()),
            locality.subzone.as_deref(),
        ];
        self.parts
            .iter()
            .zip(have)
            .all(|(want, have)| have == Some(want.as_str()))
    }

    /// Whether some locality is in both groups (one is the other or contains it).
    pub fn overlaps(&self, other: &LocalityPattern) -> bool {
        self.parts.iter().zip(&other.parts).all(|(a, b)| a == b)
    }
}

impl FromStr for LocalityPattern {
    type Err = LocalityPatternError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let body = if s == "*" {
            ""
        } else {
            s.strip_suffix("/*").unwrap_or(s)
        };
        if body.contains('*') {
            return Err(LocalityPatternError::Wildcard(s.to_owned()));
        }
        if body.is_empty() {
            return if s == "*" {
                Ok(Self { parts: Vec::new() })
            } else {
                Err(LocalityPatternError::Shape(s.to_owned()))
            };
        }
        let parts: Vec<String> = body.split('/').map(str::to_owned).collect();
        let valid = |p: &String| !p.is_empty() && !p.chars().any(char::is_whitespace);
        if parts.len() > 3 || !parts.iter().all(valid) {
            return Err(LocalityPatternError::Shape(s.to_owned()));
        }
        Ok(Self { parts })
    }
}

impl fmt::Display for LocalityPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.parts.len() {
            0 => f.write_str("*"),
            3 => f.write_str(&self.parts.join("/")),
            _ => write!(f, "{}/*", self.parts.join("/")),
        }
    }
}

impl Serialize for LocalityPattern {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(s: &str) -> Locality {
        s.parse().expect("valid locality")
    }

    #[test]
    fn parses_and_prints() {
        assert_eq!(loc("eu/eu-1").to_string(), "eu/eu-1");
        assert_eq!(loc("eu/eu-1/rack2").subzone.as_deref(), Some("rack2"));
        for bad in ["eu", "eu/", "/z", "a/b/c/d", "a b/c", ""] {
            assert!(bad.parse::<Locality>().is_err(), "{bad} must be rejected");
        }
    }

    #[test]
    fn istio_priorities() {
        let caller = loc("eu/eu-1/r1");
        assert_eq!(loc("eu/eu-1/r1").priority_from(&caller), 0);
        assert_eq!(loc("eu/eu-1/r2").priority_from(&caller), 1);
        assert_eq!(loc("eu/eu-1").priority_from(&caller), 1);
        assert_eq!(loc("eu/eu-2/r1").priority_from(&caller), 2);
        assert_eq!(loc("us/eu-1/r1").priority_from(&caller), 3);
        assert_eq!(loc("eu/eu-1").priority_from(&loc("eu/eu-1")), 0);
    }

    #[test]
    fn locality_patterns_match_by_prefix() {
        let pattern = |s: &str| s.parse::<LocalityPattern>().expect("valid pattern");
        assert_eq!(pattern("eu").to_string(), "eu/*");
        assert_eq!(pattern("eu/eu-1/*"), pattern("eu/eu-1"));
        assert_eq!(pattern("eu/eu-1/r1").to_string(), "eu/eu-1/r1");
        assert!(pattern("*").matches(&loc("us/us-1")));
        assert!(pattern("eu/*").matches(&loc("eu/eu-2/r9")));
        assert!(pattern("eu/eu-1/*").matches(&loc("eu/eu-1")));
        assert!(!pattern("eu/eu-1/r1").matches(&loc("eu/eu-1")));
        assert!(!pattern("eu/eu-1").matches(&loc("eu/eu-2")));
        assert!(pattern("eu/*").overlaps(&pattern("eu/eu-1/r1")));
        assert!(pattern("*").overlaps(&pattern("us")));
        assert!(!pattern("eu/eu-1").overlaps(&pattern("eu/eu-2")));
        for bad in [
            "", "/", "eu/", "eu//z", "a/b/c/d", "a b", "eu/*/z", "eu*", "*/*",
        ] {
            assert!(
                bad.parse::<LocalityPattern>().is_err(),
                "{bad} must be rejected"
            );
        }
        assert!(matches!(
            "eu/*/z".parse::<LocalityPattern>(),
            Err(LocalityPatternError::Wildcard(_))
        ));
    }
}
