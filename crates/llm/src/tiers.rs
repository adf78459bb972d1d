//! The kernel families' run-time choice of tier (the int8 kernels', the bf16
//! matmuls'): the best this CPU has, or the one an environment variable names.

/// `requested` among `available` (best last), or the best; an unknown or
/// unavailable name is refused with the tiers this CPU has, for `variable`'s
/// message, `what` saying what they run ("the int8 kernels at").
pub(crate) fn choose<T: Copy>(
    available: &[T],
    name: impl Fn(T) -> &'static str,
    requested: Option<&str>,
    variable: &str,
    what: &str,
) -> Result<T, String> {
    let best = *available.last().expect("a family always has its portable tier");
    let Some(wanted) = requested else { return Ok(best) };
    available.iter().copied().find(|&t| name(t) == wanted).ok_or_else(|| {
        let names: Vec<_> = available.iter().map(|&t| name(t)).collect();
        format!("{variable}={wanted}: this CPU runs {what} {}", names.join(", "))
    })
}
