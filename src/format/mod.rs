//! The bytes of a backup, independent of where they are stored: object names and the latest
//! snapshot set ([`layout`]), delta snapshot files ([`delta`]), the compression policies
//! ([`codec`], [`pdeflate`], [`lzw`]), the sha256 trailer of a full snapshot ([`trailer`]),
//! the proof recorded with it ([`proof`]), encryption at rest ([`encryption`]),
//! and the bridges between async streams and the blocking codecs ([`streamio`]).

pub mod codec;
pub mod delta;
pub mod encryption;
pub mod layout;
pub mod lzw;
pub mod pdeflate;
pub mod proof;
pub mod streamio;
pub mod trailer;
