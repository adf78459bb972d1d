//! Library side of `wrpo-sample`: prompt import (and, later, generation).

pub mod import;
