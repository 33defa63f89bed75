//! Turns every `async` block and async closure of a workflow (or `#[branch]`) body into a
//! branch: `async { .. }` becomes `branch(async { .. })`, which claims a step position
//! from its parent when it is *created* and numbers its own steps below it.
//!
//! Also marks what the body spawns: the future given to a function or method named
//! `spawn`, `spawn_local` or `spawn_on` (`tokio::spawn(f)`, `set.spawn(f)`,
//! `JoinSet::spawn(&mut set, f)`, `Background::spawn(f)`, `handle.spawn(f)`) is wrapped so
//! that, if it is not a branch, a step it calls is refused instead of running unrecorded
//! (see `durable_runtime`'s `Error::Unrecorded`). By autoref specialization at compile
//! time, an argument that is not a future (`std::thread::spawn`'s closure) is left as it
//! is, and a boxed `dyn Future` stays one. Arguments whose type only the spawn
//! function's parameter decides (`x.into()`, `Default::default()`, `n as _`) and closure
//! literals are not wrapped: going through a generic would lose that type, or the
//! closure's signature. `Box::pin(f)`, `Box::new(f)`, `Pin::from(f)` and `f.boxed()`
//! wrap `f` inside, so the box still becomes whatever box the parameter wants.

use proc_macro2::{Ident, Span, TokenStream};
use syn::parse::Parser;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::visit_mut::{self, VisitMut};
use syn::{Expr, Item, Macro, Pat, Path, Token};

pub(crate) struct Branches<'a> {
    pub(crate) krate: &'a Path,
    /// Whether a spawn call's argument was wrapped: the body then needs the traits the
    /// wrapping calls methods of (see [`rewrite_body`]).
    spawned: bool,
}

/// Rewrites a workflow or `#[branch]` body: branches, and what it spawns. The traits the
/// spawn wrapping calls methods of are imported once, at the top of the body, so that
/// the wrapping itself needs no block of its own (a block would drop the argument's
/// temporaries at its end).
pub(crate) fn rewrite_body(krate: &Path, body: &mut syn::Block) {
    let mut b = Branches {
        krate,
        spawned: false,
    };
    b.visit_block_mut(body);
    if b.spawned {
        let import: syn::Stmt = syn::parse_quote! {
            #[allow(unused_imports)]
            use #krate::__private::{SpawnBoxed as _, SpawnFuture as _, SpawnOther as _};
        };
        body.stmts.insert(0, import);
    }
}

impl VisitMut for Branches<'_> {
    /// Nested items (`fn`, `impl`, `mod` inside the body) are separate code that runs
    /// only when called, not part of this body's sequence: not descended into. A nested
    /// function that calls steps gets its own `#[branch]`.
    fn visit_item_mut(&mut self, _: &mut Item) {}

    fn visit_expr_mut(&mut self, expr: &mut Expr) {
        // Children first, so nested blocks are branches inside their parent branch.
        visit_mut::visit_expr_mut(self, expr);
        let krate = self.krate;
        match expr {
            Expr::Async(block) => {
                let span = block.async_token.span;
                *expr = syn::parse_quote_spanned!(span=> #krate::__private::branch(#block));
            }
            Expr::Call(call) if is_spawn_path(&call.func) => {
                // `JoinSet::spawn(&mut set, f)`: a method called through its type takes
                // its receiver first (an associated function of one argument,
                // `Background::spawn(f)`, takes only the future).
                let at = usize::from(is_method_path(&call.func) && call.args.len() >= 2);
                if let Some(future) = call.args.iter_mut().nth(at) {
                    self.spawned |= mark_spawned(krate, future);
                }
            }
            Expr::MethodCall(call) if is_spawn_name(&call.method) => {
                if let Some(first) = call.args.first_mut() {
                    self.spawned |= mark_spawned(krate, first);
                }
            }
            Expr::Closure(closure) if closure.asyncness.is_some() => {
                // `async |x| body` stays an async closure, wrapped in a plain closure
                // that calls it and makes the future a branch, so the branch is claimed
                // when the closure is called, like a step:
                //     { let f = async |x| body; move |a| branch(f(a)) }
                // The async closure keeps its own capture rules (it may borrow from the
                // workflow body), and the wrapper is `Fn`/`FnMut` whenever the async
                // closure's future does not borrow from the closure itself.
                let span = closure.asyncness.map_or_else(Span::call_site, |a| a.span);
                let inner = closure.clone();
                let f = Ident::new("__durable_closure", Span::mixed_site().located_at(span));
                let (params, args): (Vec<TokenStream>, Vec<Ident>) = closure
                    .inputs
                    .iter()
                    .enumerate()
                    .map(|(i, pat)| {
                        let arg = Ident::new(
                            &format!("__durable_arg{i}"),
                            Span::mixed_site().located_at(pat.span()),
                        );
                        let param = match pat {
                            Pat::Type(t) => {
                                let ty = &t.ty;
                                quote::quote!(#arg: #ty)
                            }
                            _ => quote::quote!(#arg),
                        };
                        (param, arg)
                    })
                    .unzip();
                *expr = syn::parse_quote_spanned! {span=>
                    {
                        let #f = #inner;
                        move |#(#params),*| #krate::__private::branch(#f(#(#args),*))
                    }
                };
            }
            _ => {}
        }
    }

    /// Macro arguments are token streams to syn. The common shape, comma-separated
    /// expressions (`tokio::join!`, `try_join!`, `vec!`, `assert!`), is parsed and
    /// rewritten; anything else (`select!`'s `pattern = future => handler`) is left as
    /// written, so an `async` block there is not a branch: bind it to a `let` first.
    fn visit_macro_mut(&mut self, mac: &mut Macro) {
        let parser = Punctuated::<Expr, Token![,]>::parse_terminated;
        if let Ok(mut args) = parser.parse2(mac.tokens.clone()) {
            for arg in args.iter_mut() {
                self.visit_expr_mut(arg);
            }
            mac.tokens = quote::ToTokens::into_token_stream(args);
        }
    }
}

/// Whether `name` is one of the spawn functions and methods whose argument runs outside
/// the body's polls.
fn is_spawn_name(name: &Ident) -> bool {
    name == "spawn" || name == "spawn_local" || name == "spawn_on"
}

/// Whether `func` is a path ending in a spawn function (`tokio::spawn`, `spawn`,
/// `tokio::task::spawn_local`).
fn is_spawn_path(func: &Expr) -> bool {
    match func {
        Expr::Path(p) => p
            .path
            .segments
            .last()
            .is_some_and(|s| is_spawn_name(&s.ident)),
        _ => false,
    }
}

/// Whether `func` names a method through its type (`JoinSet::spawn`,
/// `tokio::task::JoinSet::<u8>::spawn`): the segment before the last is a type, by
/// Rust's naming convention, or has generic arguments.
fn is_method_path(func: &Expr) -> bool {
    let Expr::Path(p) = func else {
        return false;
    };
    if p.qself.is_some() {
        // `<JoinSet<u8>>::spawn`, `<T as Spawn>::spawn`.
        return true;
    }
    let segments = &p.path.segments;
    segments.len() >= 2
        && segments.iter().nth(segments.len() - 2).is_some_and(|s| {
            !s.arguments.is_none() || s.ident.to_string().starts_with(char::is_uppercase)
        })
}

/// Calls whose type is inferred from where their result goes: given to a spawn
/// function, only its parameter says what they make, and a generic in between would
/// leave them undecided. None of them makes a future a workflow would spawn.
const INFERRED_METHODS: [&str; 6] = [
    "into",
    "try_into",
    "parse",
    "collect",
    "unwrap_or_default",
    "default",
];
const INFERRED_FUNCTIONS: [&str; 5] = ["default", "from", "into", "try_from", "from_str"];

/// The last two segments of a called path (`Box::pin` is `(Some("Box"), "pin")`), if
/// `func` is a path.
fn called(func: &Expr) -> Option<(Option<String>, String)> {
    let Expr::Path(f) = func else {
        return None;
    };
    let mut names = f.path.segments.iter().rev().map(|s| s.ident.to_string());
    let last = names.next()?;
    Some((names.next(), last))
}

/// Whether `expr` is one of the calls [`mark_spawned`] leaves alone because the
/// parameter decides its type (also looked for inside `expr?`).
fn typed_by_parameter(expr: &Expr) -> bool {
    match expr {
        Expr::MethodCall(m) => INFERRED_METHODS.iter().any(|n| m.method == n),
        Expr::Call(call) => called(&call.func).is_some_and(|(on, last)| {
            // `Pin::from(f)` is looked inside instead (see `mark_spawned`).
            on.as_deref() != Some("Pin") && INFERRED_FUNCTIONS.contains(&last.as_str())
        }),
        Expr::Paren(p) => typed_by_parameter(&p.expr),
        _ => false,
    }
}

/// Wraps a spawn call's future argument, in place:
/// `(&&SpawnArg::new(<arg>)).__durable_spawn()` (the body imports the traits, see
/// [`rewrite_body`]); whether it did. Left alone: a closure literal, or a block ending in
/// one (not a future, and going through a generic would lose the signature the spawn
/// function gives it, as in `pool.spawn(|x| ..)`), a literal, a cast to `_`, and the
/// calls in [`INFERRED_METHODS`] and [`INFERRED_FUNCTIONS`] (with or without a `?`).
/// `Box::pin(f)`, `Box::new(f)`, `Pin::from(f)` and `f.boxed()` are wrapped inside,
/// around `f`.
fn mark_spawned(krate: &Path, arg: &mut Expr) -> bool {
    match arg {
        Expr::Closure(_) | Expr::Lit(_) => return false,
        // `n as _`: the parameter decides.
        Expr::Cast(c) if matches!(*c.ty, syn::Type::Infer(_)) => return false,
        Expr::Paren(p) => return mark_spawned(krate, &mut p.expr),
        // `{ let k = k; move |x| x + k }`: a closure still.
        Expr::Block(b)
            if matches!(
                b.block.stmts.last(),
                Some(syn::Stmt::Expr(Expr::Closure(_), None))
            ) =>
        {
            return false;
        }
        Expr::Try(t) if typed_by_parameter(&t.expr) => return false,
        Expr::MethodCall(m) if m.method == "boxed" || m.method == "boxed_local" => {
            return mark_spawned(krate, &mut m.receiver);
        }
        _ if typed_by_parameter(arg) => return false,
        Expr::Call(call) => {
            // `Box::pin(f)`, `Box::new(f)`, `Pin::from(f)`: wrapped inside, so the box is
            // still whatever box the parameter wants (and `Box::new(|x| ..)` keeps its
            // closure).
            let boxing = called(&call.func).is_some_and(|(on, last)| {
                matches!(
                    (on.as_deref(), last.as_str()),
                    (Some("Box"), "pin" | "new") | (Some("Pin"), "from")
                )
            });
            if boxing {
                return match call.args.first_mut() {
                    Some(inner) => mark_spawned(krate, inner),
                    None => false,
                };
            }
        }
        _ => {}
    }
    let span = arg.span();
    *arg = syn::parse_quote_spanned! {span=>
        (&&#krate::__private::SpawnArg::new(#arg)).__durable_spawn()
    };
    true
}
