//! Source positions: where in the source's change history a piece of data stands.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A PostgreSQL WAL position (log sequence number), printed as PostgreSQL does: `16/B374D848`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// The text was not a position of the expected form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid position {0:?}: expected an LSN like 16/B374D848 or pg:16/B374D848")]
pub struct ParsePositionError(pub String);

impl FromStr for Lsn {
    type Err = ParsePositionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParsePositionError(s.to_string());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
            return Err(err());
        }
        let hi = u64::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((hi << 32) | lo))
    }
}

/// A position in some source's change stream. Typed per engine so positions of different engines
/// can never be compared by accident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SourcePosition {
    /// PostgreSQL: a WAL LSN.
    Postgres(Lsn),
}

impl fmt::Display for SourcePosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourcePosition::Postgres(lsn) => write!(f, "pg:{lsn}"),
        }
    }
}

impl FromStr for SourcePosition {
    type Err = ParsePositionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix("pg:") {
            Some(rest) => Ok(SourcePosition::Postgres(
                rest.parse().map_err(|_| ParsePositionError(s.to_string()))?,
            )),
            None => Err(ParsePositionError(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips_in_postgres_notation() {
        for text in ["0/0", "16/B374D848", "FFFFFFFF/FFFFFFFF", "0/1"] {
            let lsn: Lsn = text.parse().unwrap();
            assert_eq!(lsn.to_string(), text);
        }
        assert_eq!("16/B374D848".parse::<Lsn>().unwrap().0, 0x16_B374_D848);
        assert!("16B374D848".parse::<Lsn>().is_err());
        assert!("/1".parse::<Lsn>().is_err());
        assert!("123456789/1".parse::<Lsn>().is_err());
        assert!("G/1".parse::<Lsn>().is_err());
    }

    #[test]
    fn source_position_round_trips() {
        let p = SourcePosition::Postgres(Lsn(0x1_0000_0010));
        assert_eq!(p.to_string(), "pg:1/10");
        assert_eq!("pg:1/10".parse::<SourcePosition>().unwrap(), p);
        assert!("mysql:1/10".parse::<SourcePosition>().is_err());
    }
}
