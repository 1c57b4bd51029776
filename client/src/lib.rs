//! Registro client (work in progress)
