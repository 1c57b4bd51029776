//! Registro: a tiny service registry. (work in progress)
#![forbid(unsafe_code)]
