//! Attribute arguments: `#[step(name = "..", retries = 3, backoff = 100ms)]` and friends,
//! parsed into typed structs. Each option goes through a setter that rejects a repeat
//! at the repeat's span; checks between options happen once, in `finish`.

use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::ext::IdentExt;
use syn::parse::{ParseStream, Parser};
use syn::{Ident, Lit, LitStr, Path, Token};

use crate::errors::Errors;

/// The options every attribute accepts.
pub(crate) struct Common {
    /// `crate = path`: where `durable_runtime` is, for users who renamed it.
    pub(crate) krate: Path,
}

/// `#[step(...)]`.
pub(crate) struct StepArgs {
    pub(crate) common: Common,
    pub(crate) name: Option<LitStr>,
    pub(crate) retries: Option<u32>,
    /// `(initial_ms, factor, max_ms)`, present only with `retries`.
    pub(crate) backoff: Option<(u64, f64, u64)>,
    /// `on_interrupt = "..."`.
    pub(crate) on_interrupt: OnInterrupt,
}

/// What recovery does with a step that started but never recorded its result.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnInterrupt {
    /// `"rerun"`, the default: run the body again.
    Rerun,
    /// `"fail"`: record the step as failed without running it, for effects that must
    /// not happen twice.
    Fail,
}

/// `#[workflow(...)]`.
pub(crate) struct WorkflowArgs {
    pub(crate) common: Common,
    pub(crate) name: Option<LitStr>,
}

/// `#[branch(...)]`.
pub(crate) struct BranchArgs {
    pub(crate) common: Common,
}

const STEP_OPTIONS: &[&str] = &[
    "name",
    "retries",
    "backoff",
    "backoff_factor",
    "max_backoff",
    "on_interrupt",
    "crate",
];
const WORKFLOW_OPTIONS: &[&str] = &["name", "crate"];
const BRANCH_OPTIONS: &[&str] = &["crate"];

/// One `key = value` pair, as written.
struct Pair {
    key: Ident,
    value: TokenStream,
}

fn parse_pairs(input: ParseStream<'_>) -> syn::Result<Vec<Pair>> {
    let mut pairs = Vec::new();
    while !input.is_empty() {
        // `crate` is a keyword; accept any identifier and judge it later.
        let key = Ident::parse_any(input)?;
        if !input.peek(Token![=]) {
            return Err(syn::Error::new(
                key.span(),
                format!("expected `{key} = ...`"),
            ));
        }
        input.parse::<Token![=]>()?;
        let mut value = TokenStream::new();
        while !input.is_empty() && !input.peek(Token![,]) {
            value.extend(std::iter::once(input.parse::<proc_macro2::TokenTree>()?));
        }
        if value.is_empty() {
            return Err(syn::Error::new(
                key.span(),
                format!("`{key}` needs a value"),
            ));
        }
        pairs.push(Pair { key, value });
        if !input.is_empty() {
            input.parse::<Token![,]>()?;
        }
    }
    Ok(pairs)
}

/// Parses the attribute's `key = value` list and hands each pair to `set`, which
/// matches the key; a malformed list is one error.
fn each_pair(tokens: TokenStream, errors: &mut Errors, mut set: impl FnMut(&mut Errors, Pair)) {
    match parse_pairs.parse2(tokens) {
        Err(e) => errors.push(e),
        Ok(pairs) => {
            for pair in pairs {
                set(errors, pair);
            }
        }
    }
}

/// The closest known option to a misspelled one, if it is close enough to suggest.
fn suggest(word: &str, known: &'static [&'static str]) -> Option<&'static str> {
    fn distance(a: &str, b: &str) -> usize {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let cur = row[j + 1];
                row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
                prev = cur;
            }
        }
        row[b.len()]
    }
    known
        .iter()
        .map(|k| (distance(word, k), *k))
        // Up to half the option's length: `retry` -> `retries` is 3 edits away.
        .filter(|(d, k)| *d <= 1.max(k.len() / 2))
        .min()
        .map(|(_, k)| k)
}

fn unknown(attr: &str, key: &Ident, known: &'static [&'static str]) -> syn::Error {
    // A proc macro on stable cannot attach a `help:` line, so a close match goes in the
    // message itself; otherwise the message lists every option.
    let word = key.to_string();
    let message = match suggest(&word, known) {
        Some(s) => format!("unknown `{attr}` option `{key}`; did you mean `{s}`?"),
        None if attr != "step" && STEP_OPTIONS.contains(&word.as_str()) => {
            format!("`{key}` is a `#[step]` option; put it on the steps this `#[{attr}]` calls")
        }
        None => {
            let list = known
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ");
            format!("unknown `{attr}` option `{key}`; expected one of {list}")
        }
    };
    syn::Error::new(key.span(), message)
}

/// Sets `slot` once; a second occurrence is an error at the second key.
fn set_once<T>(
    errors: &mut Errors,
    slot: &mut Option<(Span, T)>,
    key: &Ident,
    value: syn::Result<T>,
) {
    if slot.is_some() {
        errors.push(syn::Error::new(
            key.span(),
            format!("`{key}` is given twice"),
        ));
        return;
    }
    match value {
        Ok(v) => *slot = Some((key.span(), v)),
        Err(e) => errors.push(e),
    }
}

fn parse_lit_str(key: &Ident, value: &TokenStream) -> syn::Result<LitStr> {
    match syn::parse2::<Lit>(value.clone()) {
        Ok(Lit::Str(s)) if !s.value().trim().is_empty() => Ok(s),
        Ok(Lit::Str(s)) => Err(syn::Error::new(
            s.span(),
            format!("`{key}` cannot be empty"),
        )),
        _ => Err(syn::Error::new_spanned(
            value,
            format!("`{key}` takes a string literal, such as `{key} = \"charge_card\"`"),
        )),
    }
}

/// The prefix of the names the runtime records its own operations under.
const RESERVED_PREFIX: &str = "durable::";

/// `name = ".."` on a step or workflow. Names starting with `durable::` are the
/// runtime's own (`durable::sleep`, `durable::recv`, ...): a user step recorded under
/// one could be mistaken for a runtime operation on replay, and the other way round.
fn parse_name(key: &Ident, value: &TokenStream) -> syn::Result<LitStr> {
    let name = parse_lit_str(key, value)?;
    if name.value().trim_start().starts_with(RESERVED_PREFIX) {
        return Err(syn::Error::new(
            name.span(),
            format!(
                "names starting with `{RESERVED_PREFIX}` are reserved: the runtime records its own operations (`durable::sleep`, `durable::recv`, ...) under them; choose a name without that prefix"
            ),
        ));
    }
    Ok(name)
}

/// `on_interrupt = "rerun"` or `"fail"`.
fn parse_on_interrupt(value: &TokenStream) -> syn::Result<OnInterrupt> {
    const VALUES: &[&str] = &["rerun", "fail"];
    let expected = "expected `\"rerun\"` or `\"fail\"`";
    match syn::parse2::<Lit>(value.clone()) {
        Ok(Lit::Str(s)) => match s.value().as_str() {
            "rerun" => Ok(OnInterrupt::Rerun),
            "fail" => Ok(OnInterrupt::Fail),
            other => {
                let message = match suggest(other, VALUES) {
                    Some(v) => {
                        format!("unknown `on_interrupt` value `{other:?}`; did you mean `\"{v}\"`?")
                    }
                    None => format!("unknown `on_interrupt` value `{other:?}`; {expected}"),
                };
                Err(syn::Error::new(s.span(), message))
            }
        },
        // `on_interrupt = fail`: the value is right, the quotes are missing.
        _ => match syn::parse2::<Ident>(value.clone()) {
            Ok(i) if VALUES.contains(&i.to_string().as_str()) => Err(syn::Error::new(
                i.span(),
                format!("`on_interrupt` takes a string literal; write `on_interrupt = \"{i}\"`"),
            )),
            _ => Err(syn::Error::new_spanned(
                value,
                format!("`on_interrupt` takes a string literal; {expected}"),
            )),
        },
    }
}

fn parse_krate(value: &TokenStream) -> syn::Result<Path> {
    // `crate = my_durable` or, as tokio spells it, `crate = "my_durable"`.
    if let Ok(s) = syn::parse2::<LitStr>(value.clone()) {
        return s.parse::<Path>();
    }
    syn::parse2::<Path>(value.clone()).map_err(|_| {
        syn::Error::new_spanned(
            value,
            "`crate` takes a path to durable-runtime, such as `crate = ::my_durable`",
        )
    })
}

fn parse_retries(value: &TokenStream) -> syn::Result<u32> {
    let message = "`retries` takes a whole number of retries, such as `retries = 3`";
    match syn::parse2::<Lit>(value.clone()) {
        Ok(Lit::Int(i)) if i.suffix().is_empty() => i
            .base10_parse::<u32>()
            .map_err(|_| syn::Error::new(i.span(), message)),
        _ => Err(syn::Error::new_spanned(value, message)),
    }
}

/// A duration written as an integer with a unit suffix: `250ms`, `2s`, `1m`.
fn parse_duration(key: &Ident, value: &TokenStream) -> syn::Result<u64> {
    let message =
        format!("`{key}` takes a duration with a unit, such as `{key} = 250ms` or `{key} = 2s`");
    let Ok(Lit::Int(i)) = syn::parse2::<Lit>(value.clone()) else {
        return Err(syn::Error::new_spanned(value, message));
    };
    let per_unit: u64 = match i.suffix() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "" => {
            return Err(syn::Error::new(
                i.span(),
                format!(
                    "`{key}` needs a unit: write `{}ms` or `{}s`",
                    i.base10_digits(),
                    i.base10_digits()
                ),
            ));
        }
        other => {
            return Err(syn::Error::new(
                i.span(),
                format!("unknown duration unit `{other}`; use `ms`, `s` or `m`"),
            ));
        }
    };
    i.base10_digits()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(per_unit))
        .ok_or_else(|| syn::Error::new(i.span(), format!("`{key}` is too large")))
}

fn parse_factor(value: &TokenStream) -> syn::Result<f64> {
    let message = "`backoff_factor` takes a number of at least 1.0, such as `backoff_factor = 2.0`";
    let f = match syn::parse2::<Lit>(value.clone()) {
        Ok(Lit::Float(f)) if f.suffix().is_empty() => f.base10_parse::<f64>().ok(),
        Ok(Lit::Int(i)) if i.suffix().is_empty() => i.base10_parse::<u32>().ok().map(f64::from),
        _ => None,
    };
    match f {
        Some(f) if f.is_finite() && f >= 1.0 => Ok(f),
        _ => Err(syn::Error::new_spanned(value, message)),
    }
}

fn default_krate() -> Path {
    syn::parse_quote!(::durable_runtime)
}

impl StepArgs {
    pub(crate) fn parse(tokens: TokenStream, errors: &mut Errors) -> StepArgs {
        let mut krate = None;
        let mut name = None;
        let mut retries = None;
        let mut backoff = None;
        let mut factor = None;
        let mut max = None;
        let mut on_interrupt = None;
        each_pair(tokens, errors, |errors, Pair { key, value }| {
            match key.to_string().as_str() {
                "crate" => set_once(errors, &mut krate, &key, parse_krate(&value)),
                "name" => set_once(errors, &mut name, &key, parse_name(&key, &value)),
                "retries" => set_once(errors, &mut retries, &key, parse_retries(&value)),
                "backoff" => set_once(errors, &mut backoff, &key, parse_duration(&key, &value)),
                "backoff_factor" => set_once(errors, &mut factor, &key, parse_factor(&value)),
                "max_backoff" => set_once(errors, &mut max, &key, parse_duration(&key, &value)),
                "on_interrupt" => {
                    set_once(errors, &mut on_interrupt, &key, parse_on_interrupt(&value));
                }
                _ => errors.push(unknown("step", &key, STEP_OPTIONS)),
            }
        });
        // `on_interrupt` is independent of the other options: it is not checked in
        // `finish`.
        StepArgs {
            on_interrupt: on_interrupt.map_or(OnInterrupt::Rerun, |o| o.1),
            ..StepArgs::finish(krate, name, retries, backoff, factor, max, errors)
        }
    }

    /// Checks between options.
    fn finish(
        krate: Option<(Span, Path)>,
        name: Option<(Span, LitStr)>,
        retries: Option<(Span, u32)>,
        backoff: Option<(Span, u64)>,
        factor: Option<(Span, f64)>,
        max: Option<(Span, u64)>,
        errors: &mut Errors,
    ) -> StepArgs {
        // Backoff options shape the delay between retries; without retries they would
        // be silently ignored, which hides a forgotten `retries`.
        if retries.is_none() {
            for (opt, span) in [
                ("backoff", backoff.map(|b| b.0)),
                ("backoff_factor", factor.map(|f| f.0)),
                ("max_backoff", max.map(|m| m.0)),
            ] {
                if let Some(span) = span {
                    errors.push(syn::Error::new(
                        span,
                        format!("`{opt}` has no effect without `retries`; add `retries = N` or remove it"),
                    ));
                }
            }
        }
        let initial = backoff.map_or(100, |b| b.1);
        let cap = max.map_or(10_000.max(initial), |m| m.1);
        // A cap below the first delay would make `backoff` meaningless.
        if let Some((span, m)) = max
            && m < initial
        {
            errors.push(syn::Error::new(
                span,
                format!("`max_backoff` ({m}ms) is shorter than `backoff` ({initial}ms)"),
            ));
        }
        StepArgs {
            common: Common {
                krate: krate.map_or_else(default_krate, |k| k.1),
            },
            name: name.map(|n| n.1),
            backoff: retries.map(|_| (initial, factor.map_or(2.0, |f| f.1), cap)),
            retries: retries.map(|r| r.1),
            on_interrupt: OnInterrupt::Rerun,
        }
    }
}

impl WorkflowArgs {
    pub(crate) fn parse(tokens: TokenStream, errors: &mut Errors) -> WorkflowArgs {
        let mut krate = None;
        let mut name = None;
        each_pair(tokens, errors, |errors, Pair { key, value }| {
            match key.to_string().as_str() {
                "crate" => set_once(errors, &mut krate, &key, parse_krate(&value)),
                "name" => set_once(errors, &mut name, &key, parse_name(&key, &value)),
                _ => errors.push(unknown("workflow", &key, WORKFLOW_OPTIONS)),
            }
        });
        WorkflowArgs {
            common: Common {
                krate: krate.map_or_else(default_krate, |k| k.1),
            },
            name: name.map(|n| n.1),
        }
    }
}

impl BranchArgs {
    pub(crate) fn parse(tokens: TokenStream, errors: &mut Errors) -> BranchArgs {
        let mut krate = None;
        each_pair(tokens, errors, |errors, Pair { key, value }| {
            match key.to_string().as_str() {
                "crate" => set_once(errors, &mut krate, &key, parse_krate(&value)),
                _ => errors.push(unknown("branch", &key, BRANCH_OPTIONS)),
            }
        });
        BranchArgs {
            common: Common {
                krate: krate.map_or_else(default_krate, |k| k.1),
            },
        }
    }
}

impl ToTokens for Common {
    fn to_tokens(&self, tokens: &mut TokenStream) {
        self.krate.to_tokens(tokens);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quote::quote;

    fn step_errors(args: TokenStream) -> Vec<String> {
        let mut errors = Errors::default();
        StepArgs::parse(args, &mut errors);
        errors
            .finish()
            .err()
            .map_or_else(Vec::new, |e| e.into_iter().map(|e| e.to_string()).collect())
    }

    #[test]
    fn on_interrupt_values() {
        let mut errors = Errors::default();
        let args = StepArgs::parse(quote!(on_interrupt = "fail"), &mut errors);
        assert!(errors.finish().is_ok());
        assert!(args.on_interrupt == OnInterrupt::Fail);
        let mut errors = Errors::default();
        let args = StepArgs::parse(quote!(retries = 2, on_interrupt = "rerun"), &mut errors);
        assert!(errors.finish().is_ok());
        assert!(args.on_interrupt == OnInterrupt::Rerun);
        let mut errors = Errors::default();
        assert!(StepArgs::parse(quote!(), &mut errors).on_interrupt == OnInterrupt::Rerun);
    }

    #[test]
    fn on_interrupt_mistakes() {
        assert_eq!(
            step_errors(quote!(on_interrupt = "skip")),
            ["unknown `on_interrupt` value `\"skip\"`; expected `\"rerun\"` or `\"fail\"`"]
        );
        assert_eq!(
            step_errors(quote!(on_interrupt = "fial")),
            ["unknown `on_interrupt` value `\"fial\"`; did you mean `\"fail\"`?"]
        );
        assert_eq!(
            step_errors(quote!(on_interrupt = fail)),
            ["`on_interrupt` takes a string literal; write `on_interrupt = \"fail\"`"]
        );
        assert_eq!(
            step_errors(quote!(on_interrupt = true)),
            ["`on_interrupt` takes a string literal; expected `\"rerun\"` or `\"fail\"`"]
        );
        assert_eq!(
            step_errors(quote!(on_interrupt = "fail", on_interrupt = "rerun")),
            ["`on_interrupt` is given twice"]
        );
        assert_eq!(
            step_errors(quote!(on_interupt = "fail")),
            ["unknown `step` option `on_interupt`; did you mean `on_interrupt`?"]
        );
    }

    #[test]
    fn on_interrupt_is_a_step_option() {
        let mut errors = Errors::default();
        WorkflowArgs::parse(quote!(on_interrupt = "fail"), &mut errors);
        let e = errors.finish().expect_err("a workflow option").to_string();
        assert!(e.starts_with("`on_interrupt` is a `#[step]` option"), "{e}");
    }

    #[test]
    fn reserved_names() {
        assert_eq!(step_errors(quote!(name = "durable::sleep")).len(), 1);
        assert_eq!(step_errors(quote!(name = "durable_sleep")).len(), 0);
        assert_eq!(step_errors(quote!(name = "my::durable::sleep")).len(), 0);
        let mut errors = Errors::default();
        WorkflowArgs::parse(quote!(name = "durable::checkout"), &mut errors);
        assert!(errors.finish().is_err());
    }
}
