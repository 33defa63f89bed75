//! Determinism guard rails for `#[workflow]` and `#[branch]` bodies: calls that make a
//! replay take a different path than the recorded run are compile errors, each at the
//! offending path, with the recorded alternative in the message.
//!
//! A workflow body is re-run from the top on recovery and must ask for the same steps in
//! the same order; only inputs and step outputs may steer it. The rules:
//!
//! - **`select!` without `biased;`** (any macro whose path ends in `select`:
//!   `tokio::select!`, `futures::select!`, a `select!` brought in by `use`): it polls
//!   its branches in a random order, so when several are ready (as they all are on
//!   replay, where recorded steps complete at once) a replay can take another branch.
//!   `tokio::select! { biased; .. }` polls in order and passes; so does
//!   `futures::select_biased!`, whose name does not end in `select`.
//! - **The wall clock** (paths ending in `SystemTime::now`, `Instant::now`,
//!   `Utc::now`, `Local::now`, `OffsetDateTime::now_utc`, `OffsetDateTime::now_local`):
//!   the time differs on every run, and a replay that branches on it diverges.
//! - **A timer that is not durable** (paths ending in `time::sleep`,
//!   `time::sleep_until`, `time::timeout`, `time::timeout_at`, `time::interval`,
//!   `time::interval_at`, such as `tokio::time::sleep`, and `thread::sleep`): it
//!   starts again from zero after a crash, and when a dormant workflow is rebuilt by
//!   replay, so its wait never ends for a workflow woken more often than it lasts; and
//!   `thread::sleep` blocks the thread every workflow runs on.
//! - **Unrecorded randomness** (`rand::random`, `rand::thread_rng` or a bare
//!   `thread_rng`, `rand::rng`, anything under `rand::rngs::`, any path naming `OsRng`,
//!   anything under `fastrand::`, paths ending in `Uuid::new_v4` or `Uuid::now_v7`):
//!   a new value on every run.
//!
//! Step bodies are not checked: a step's output is recorded, so reading the clock there
//! is the fix, not the problem. That includes the closure of a transaction step (a
//! closure passed to a call whose path ends in `transaction`, such as
//! `durable_runtime::sqlite::transaction`), which runs as the step.
//!
//! These are heuristics on what a macro can see, paths as written. `Instant::now()`
//! after `use std::time::Instant` is caught, since the path still ends in
//! `Instant::now`; `random()` after `use rand::random` is not (a bare `random` is too
//! common a name to judge), nor is a clock read in a helper function defined elsewhere,
//! a method on a generator (`rng.random()`), `<Instant>::now()`, or a macro argument
//! that is not an expression (`tracing::info!(at = ?Instant::now())`). A user type
//! that happens to be called `Instant` or `Uuid` is judged like the real one. The rules
//! catch the usual spellings; they are no proof of determinism.
//!
//! What is walked: the whole body, including closures and `async` blocks (they run as
//! part of the workflow), and the arguments of macros whose tokens parse as
//! comma-separated expressions (`tokio::join!`, `vec!`, `println!`), as the branch
//! rewrite does; `select!` branches (`pattern = future => handler`) are parsed for that
//! too. Not walked: nested items (`fn`, `impl`, `mod` inside the body), which run only
//! when called and may be called from a step; macros with other shapes.
//!
//! The walk is a `VisitMut` that changes nothing: the workspace builds syn without its
//! `visit` feature, and `visit-mut` visits the same nodes.

use proc_macro2::TokenStream;
use syn::parse::{ParseStream, Parser};
use syn::punctuated::Punctuated;
use syn::visit_mut::{self, VisitMut};
use syn::{Block, Expr, Item, Macro, Pat, Path, Token};

use crate::errors::Errors;

/// Checks `body` (before the branch rewrite, so every span is the user's), pushing one
/// error per offending path or macro. `krate` is the runtime's path, to name the
/// recorded alternatives as the user spells them and to let its own `select!` through.
pub(crate) fn check(krate: &Path, body: &mut Block, errors: &mut Errors) {
    Guard {
        krate: display_path(krate),
        errors,
    }
    .visit_block_mut(body);
}

struct Guard<'a> {
    /// The runtime's path as the user writes it, `durable_runtime` by default.
    krate: String,
    errors: &'a mut Errors,
}

/// A rule a path can break.
#[derive(Clone, Copy)]
enum Rule {
    Clock,
    Timer,
    BlockingSleep,
    Random,
    Uuid,
}

/// `::durable_runtime` -> `durable_runtime`: a path as a user would write it in code.
fn display_path(path: &Path) -> String {
    path.segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect::<Vec<_>>()
        .join("::")
}

/// Which rule, if any, the path `segments` (identifiers only, without a leading `::`
/// or generic arguments) breaks.
fn rule(segments: &[String]) -> Option<Rule> {
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    let ends = |tail: &[&str]| s.ends_with(tail);
    let clock = [
        ["SystemTime", "now"],
        ["Instant", "now"],
        ["Utc", "now"],
        ["Local", "now"],
        ["OffsetDateTime", "now_utc"],
        ["OffsetDateTime", "now_local"],
    ];
    if clock.iter().any(|c| ends(c)) {
        return Some(Rule::Clock);
    }
    let timers = [
        "sleep",
        "sleep_until",
        "timeout",
        "timeout_at",
        "interval",
        "interval_at",
    ];
    if timers.iter().any(|t| ends(&["time", t])) {
        return Some(Rule::Timer);
    }
    if ends(&["thread", "sleep"]) {
        return Some(Rule::BlockingSleep);
    }
    if ends(&["Uuid", "new_v4"]) || ends(&["Uuid", "now_v7"]) {
        return Some(Rule::Uuid);
    }
    let random = ends(&["rand", "random"])
        || ends(&["rand", "rng"])
        || s.last() == Some(&"thread_rng")
        // `rand::rngs::OsRng`, `rand::rngs::StdRng::from_os_rng()`: a path *under*
        // `rand::rngs`, not the module itself in a `use`-like position.
        || s.windows(3).any(|w| w[..2] == ["rand", "rngs"])
        || s.contains(&"OsRng")
        || (s.first() == Some(&"fastrand") && s.len() > 1);
    random.then_some(Rule::Random)
}

impl Guard<'_> {
    fn message(&self, rule: Rule) -> String {
        let k = &self.krate;
        match rule {
            Rule::Clock => format!(
                "reading the wall clock in a workflow makes replay diverge; use `{k}::now()`, which records the time, or read it inside a `#[step]`"
            ),
            Rule::Timer => format!(
                "a tokio timer in a workflow is not durable: it starts again from zero after a crash, and each time the workflow is rebuilt from its journal; use `{k}::sleep`, or a timeout on `{k}::recv` or `{k}::get_event`, which are recorded, or time the work inside a `#[step]`"
            ),
            Rule::BlockingSleep => format!(
                "`thread::sleep` in a workflow blocks the thread every workflow runs on, and is not durable; use `{k}::sleep`, which is recorded and lets the workflow wait without holding a thread"
            ),
            Rule::Random => format!(
                "drawing an unrecorded random value in a workflow makes replay diverge; use `{k}::random()` or `{k}::uuid()`, which record their value, or draw it inside a `#[step]`"
            ),
            Rule::Uuid => format!(
                "generating a uuid in a workflow makes replay diverge; use `{k}::uuid()`, which records its value, or generate it inside a `#[step]`"
            ),
        }
    }

    fn check_path(&mut self, path: &Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        if let Some(rule) = rule(&segments) {
            let message = self.message(rule);
            self.errors.push(syn::Error::new_spanned(path, message));
        }
    }

    /// `select!` polls its ready branches in a random order unless told `biased;`.
    fn check_select(&mut self, mac: &Macro) {
        let segments: Vec<String> = mac
            .path
            .segments
            .iter()
            .map(|s| s.ident.to_string())
            .collect();
        if segments.last().map(String::as_str) != Some("select")
            // The runtime's own (recording) select, if it is a macro, is the fix.
            || (segments.len() > 1 && segments[..segments.len() - 1].join("::") == self.krate)
            || starts_biased(&mac.tokens)
        {
            return;
        }
        let k = &self.krate;
        // `futures::select!` has no `biased;` mode; its in-order twin is another macro.
        let in_order = if segments.first().map(String::as_str) == Some("futures") {
            "use `futures::select_biased!` to poll branches in order"
        } else {
            "write `biased;` first to poll branches in order"
        };
        self.errors.push(syn::Error::new_spanned(
            &mac.path,
            format!(
                "`select!` without `biased;` picks a random ready branch, so a replay can take a different branch than the recorded run; use `{k}::select`, which records the winner, or {in_order}"
            ),
        ));
    }
}

fn starts_biased(tokens: &TokenStream) -> bool {
    let mut it = tokens.clone().into_iter();
    matches!(
        (it.next(), it.next()),
        (Some(proc_macro2::TokenTree::Ident(i)), Some(proc_macro2::TokenTree::Punct(p)))
            if i == "biased" && p.as_char() == ';'
    )
}

/// The expressions of a `select!` body: each branch's future, its `if` precondition and
/// its handler, and the `else` (or `complete`/`default`) handler. Tokio's and futures'
/// grammars share this shape; `None` if the body does not follow it.
fn select_exprs(input: ParseStream<'_>) -> syn::Result<Vec<Expr>> {
    let mut exprs = Vec::new();
    if input.peek(syn::Ident) && input.peek2(Token![;]) {
        input.parse::<syn::Ident>()?;
        input.parse::<Token![;]>()?;
    }
    while !input.is_empty() {
        let handler_only =
            (input.peek(Token![else]) || input.peek(syn::Ident)) && input.peek2(Token![=>]);
        if handler_only {
            // `else =>`, `complete =>`, `default =>`.
            input.parse::<proc_macro2::TokenTree>()?;
        } else {
            Pat::parse_multi_with_leading_vert(input)?;
            input.parse::<Token![=]>()?;
            exprs.push(Expr::parse_without_eager_brace(input)?);
            if input.peek(Token![,]) && input.peek2(Token![if]) {
                input.parse::<Token![,]>()?;
                input.parse::<Token![if]>()?;
                exprs.push(Expr::parse_without_eager_brace(input)?);
            }
        }
        input.parse::<Token![=>]>()?;
        exprs.push(input.parse::<Expr>()?);
        if !input.is_empty() {
            input.parse::<Token![,]>().or_else(|e| {
                // A block handler needs no comma after it.
                if matches!(exprs.last(), Some(Expr::Block(_))) {
                    Ok(Default::default())
                } else {
                    Err(e)
                }
            })?;
        }
    }
    Ok(exprs)
}

impl VisitMut for Guard<'_> {
    /// Nested items run only when called, possibly from a step: not checked.
    fn visit_item_mut(&mut self, _: &mut Item) {}

    /// A closure passed to a transaction step is that step's body: not checked.
    fn visit_expr_call_mut(&mut self, call: &mut syn::ExprCall) {
        let is_transaction = matches!(&*call.func, Expr::Path(p)
            if p.path.segments.last().is_some_and(|s| s.ident == "transaction"));
        if !is_transaction {
            visit_mut::visit_expr_call_mut(self, call);
            return;
        }
        self.visit_expr_mut(&mut call.func);
        for arg in &mut call.args {
            if !matches!(arg, Expr::Closure(_)) {
                self.visit_expr_mut(arg);
            }
        }
    }

    fn visit_expr_path_mut(&mut self, expr: &mut syn::ExprPath) {
        self.check_path(&expr.path);
        visit_mut::visit_expr_path_mut(self, expr);
    }

    fn visit_macro_mut(&mut self, mac: &mut Macro) {
        self.check_select(mac);
        let exprs = if mac
            .path
            .segments
            .last()
            .is_some_and(|s| s.ident == "select")
        {
            select_exprs.parse2(mac.tokens.clone()).ok()
        } else {
            Punctuated::<Expr, Token![,]>::parse_terminated
                .parse2(mac.tokens.clone())
                .ok()
                .map(|p| p.into_iter().collect())
        };
        for mut expr in exprs.into_iter().flatten() {
            self.visit_expr_mut(&mut expr);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(body: TokenStream) -> Vec<String> {
        let mut block: Block = syn::parse2(body).expect("a block");
        let mut errors = Errors::default();
        check(
            &syn::parse_quote!(::durable_runtime),
            &mut block,
            &mut errors,
        );
        match errors.finish() {
            Ok(()) => Vec::new(),
            Err(e) => e.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    fn count(body: TokenStream) -> usize {
        errors(body).len()
    }

    #[test]
    fn clock_reads_under_any_prefix() {
        assert_eq!(count(quote::quote!({ std::time::SystemTime::now() })), 1);
        assert_eq!(count(quote::quote!({ ::std::time::Instant::now() })), 1);
        assert_eq!(count(quote::quote!({ tokio::time::Instant::now() })), 1);
        assert_eq!(count(quote::quote!({ Instant::now().elapsed() })), 1);
        assert_eq!(count(quote::quote!({ chrono::Utc::now() })), 1);
        assert_eq!(count(quote::quote!({ Local::now() })), 1);
        // As a value, not only as a call.
        assert_eq!(
            count(quote::quote!({
                let f = SystemTime::now;
                f()
            })),
            1
        );
        assert!(errors(quote::quote!({ Instant::now() }))[0].contains("`durable_runtime::now()`"));
    }

    #[test]
    fn timers_that_are_not_durable() {
        assert_eq!(count(quote::quote!({ tokio::time::sleep(d).await })), 1);
        assert_eq!(count(quote::quote!({ time::timeout(d, f).await })), 1);
        assert_eq!(count(quote::quote!({ ::tokio::time::interval(d) })), 1);
        assert_eq!(count(quote::quote!({ tokio::time::sleep_until(at) })), 1);
        assert_eq!(count(quote::quote!({ std::thread::sleep(d) })), 1);
        assert!(
            errors(quote::quote!({ tokio::time::sleep(d) }))[0]
                .contains("use `durable_runtime::sleep`")
        );
        // A transaction step's closure is a step body.
        assert_eq!(
            count(quote::quote!({
                durable_runtime::sqlite::transaction("t", move |tx| {
                    std::thread::sleep(d);
                    Ok(())
                })
                .await
            })),
            0
        );
        assert_eq!(
            count(quote::quote!({
                transaction(tokio::time::sleep(d), |tx| Ok(()))
            })),
            1
        );
        // The durable sleep, however it is named, passes.
        assert_eq!(count(quote::quote!({ durable_runtime::sleep(d).await })), 0);
        assert_eq!(count(quote::quote!({ sleep(d).await })), 0);
        assert_eq!(count(quote::quote!({ my::sleep(d).await })), 0);
    }

    #[test]
    fn randomness() {
        assert_eq!(count(quote::quote!({ rand::random::<u64>() })), 1);
        assert_eq!(count(quote::quote!({ rand::thread_rng() })), 1);
        assert_eq!(count(quote::quote!({ thread_rng() })), 1);
        assert_eq!(count(quote::quote!({ rand::rng() })), 1);
        assert_eq!(
            count(quote::quote!({ rand::rngs::StdRng::from_os_rng() })),
            1
        );
        assert_eq!(count(quote::quote!({ OsRng.next_u64() })), 1);
        assert_eq!(count(quote::quote!({ fastrand::u64(..) })), 1);
        assert_eq!(count(quote::quote!({ uuid::Uuid::new_v4() })), 1);
        assert_eq!(count(quote::quote!({ Uuid::now_v7() })), 1);
    }

    #[test]
    fn lookalikes_pass() {
        assert_eq!(count(quote::quote!({ now() })), 0);
        assert_eq!(count(quote::quote!({ random() })), 0);
        assert_eq!(count(quote::quote!({ durable_runtime::now() })), 0);
        assert_eq!(count(quote::quote!({ Uuid::parse_str(s) })), 0);
        assert_eq!(count(quote::quote!({ my::rand::seeded() })), 0);
        assert_eq!(
            count(quote::quote!({
                let x: Instant = t;
                x
            })),
            0
        );
    }

    #[test]
    fn walks_closures_async_blocks_and_macro_arguments() {
        assert_eq!(
            count(quote::quote!({
                let f = || Instant::now();
            })),
            1
        );
        assert_eq!(
            count(quote::quote!({
                async { async move { Instant::now() }.await }
            })),
            1
        );
        assert_eq!(
            count(quote::quote!({
                tokio::join!(a(), async { rand::random::<u8>() })
            })),
            1
        );
        assert_eq!(
            count(quote::quote!({
                println!("{:?}", vec![Instant::now()]);
            })),
            1
        );
    }

    #[test]
    fn skips_nested_items() {
        assert_eq!(
            count(quote::quote!({
                fn stamp() -> Instant {
                    Instant::now()
                }
                impl X {
                    fn f() {
                        rand::random::<u8>();
                    }
                }
                stamp()
            })),
            0
        );
    }

    #[test]
    fn select_needs_biased() {
        assert_eq!(
            count(quote::quote!({
                tokio::select! { x = a() => x, y = b() => y }
            })),
            1
        );
        assert_eq!(
            count(quote::quote!({
                select! { x = a() => x }
            })),
            1
        );
        assert_eq!(
            count(quote::quote!({
                tokio::select! { biased; x = a() => x, y = b() => y }
            })),
            0
        );
        assert_eq!(
            count(quote::quote!({
                futures::select_biased! { x = a => x }
            })),
            0
        );
        assert_eq!(
            count(quote::quote!({
                durable_runtime::select! { x = a() => x }
            })),
            0
        );
        let futures = errors(quote::quote!({
            futures::select! { x = a => x, complete => 0 }
        }));
        assert_eq!(futures.len(), 1);
        assert!(futures[0].contains("`futures::select_biased!`"));
    }

    #[test]
    fn select_branches_are_walked() {
        // Future, precondition, block handler without a comma, `else` handler.
        let body = quote::quote!({
            tokio::select! {
                biased;
                x = a(Instant::now()), if rand::random::<bool>() => { Utc::now() }
                Some(y) = b() => y,
                else => Uuid::new_v4(),
            }
        });
        assert_eq!(count(body), 4);
    }
}
