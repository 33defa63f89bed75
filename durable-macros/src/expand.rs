//! Code generation. Everything generated names only absolute paths into the runtime's
//! `__private` module (through the `crate = ..` path), `::core` and `::std` items
//! re-exported there, and `__durable`-prefixed locals.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Block, FnArg, Ident, ItemFn, Pat, Path, Type};

use crate::args::{BranchArgs, OnInterrupt, StepArgs, WorkflowArgs};
use crate::errors::{Errors, with_item};
use crate::guard;
use crate::state::StateParam;
use crate::validate::{self, Kind};

/// One argument: the name the generated function uses for it, and how the body binds
/// it (the original pattern, for `mut x` or `(a, b): (u32, u32)`).
struct Arg {
    name: Ident,
    pat: Pat,
    ty: Type,
}

impl Arg {
    /// `let <pattern> = <name>;` if the body needs the original pattern back.
    fn unpack(&self) -> Option<TokenStream> {
        match &self.pat {
            Pat::Ident(p) if p.by_ref.is_none() && p.mutability.is_none() && p.subpat.is_none() => {
                None
            }
            pat => {
                let name = &self.name;
                Some(quote!(let #pat = #name;))
            }
        }
    }
}

fn arguments(item: &ItemFn) -> Vec<Arg> {
    item.sig
        .inputs
        .iter()
        .enumerate()
        .filter_map(|(i, arg)| match arg {
            FnArg::Typed(t) => Some(Arg {
                name: match &*t.pat {
                    Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => p.ident.clone(),
                    _ => format_ident!("__durable_arg{}", i),
                },
                pat: (*t.pat).clone(),
                ty: (*t.ty).clone(),
            }),
            FnArg::Receiver(_) => None,
        })
        .collect()
}

/// The body of a step or branch future: `prelude` (argument patterns), then the user's
/// block, with its value bound to the declared return type `ret`. A mismatch is then
/// reported on the user's expression against the user's type, as in a plain `async fn`,
/// and not on the attribute as an unsatisfied `Future<Output = ..>` bound. The `return`
/// that is never taken fixes the async block's output type before the block is checked,
/// so a `return` of the wrong type is reported at that `return` too (async-trait's trick).
fn typed_body(
    k: &Path,
    ret: &Type,
    prelude: impl Iterator<Item = TokenStream>,
    block: &Block,
) -> TokenStream {
    let ret_span = ret.span();
    let out = Ident::new("__durable_out", Span::mixed_site().located_at(ret_span));
    let fix_output = quote_spanned! {ret_span=>
        if let #k::__private::core::option::Option::Some(#out) =
            #k::__private::core::option::Option::None::<#ret>
        {
            #[allow(unreachable_code)]
            return #out;
        }
    };
    quote! {{
        #fix_output
        #(#prelude)*
        let #out: #ret = #block;
        #out
    }}
}

fn parse_fn(kind: &str, item: &TokenStream) -> syn::Result<ItemFn> {
    syn::parse2::<ItemFn>(item.clone()).map_err(|e| {
        let mut err = syn::Error::new(e.span(), format!("`#[{kind}]` goes on an `async fn`"));
        err.combine(e);
        err
    })
}

pub(crate) fn step(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = StepArgs::parse(args, &mut errors);
    let mut func = match parse_fn("step", &item) {
        Ok(f) => f,
        Err(e) => return with_item(item, &e),
    };
    // The `#[state]` parameters leave the signature before it is checked: they are not
    // arguments.
    let states = crate::state::take(&mut func.sig, &mut errors);
    let item = quote!(#func);
    validate::is_async(Kind::Step, &func.sig, &mut errors);
    validate::plain_fn(Kind::Step, &func.sig, &mut errors);
    validate::no_receiver(Kind::Step, &func.sig, &mut errors);
    validate::owned_arguments(Kind::Step, &func.sig, &mut errors);
    validate::owned_output(Kind::Step, &func.sig, &mut errors);
    validate::recordable_error(Kind::Step, &func.sig, &mut errors);
    if let Err(e) = errors.finish() {
        return with_item(item, &e);
    }

    let k = &args.common.krate;
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
        ..
    } = &func;
    let ident = &sig.ident;
    let (impl_generics, _, where_clause) = sig.generics.split_for_impl();
    let name = args
        .name
        .as_ref()
        .map_or_else(|| ident.to_string(), syn::LitStr::value);
    let ret = validate::output_type(sig);
    let params = arguments(&func);
    let inputs = params.iter().map(|a| {
        let (name, ty) = (&a.name, &a.ty);
        quote!(#name: #ty)
    });
    let ret_span = ret.span();
    let assert_output = quote_spanned!(ret_span=> #k::__private::assert_journaled::<#ret>(););
    let prelude =
        StateParam::bindings(k, &name, &states).chain(params.iter().filter_map(Arg::unpack));
    let body = typed_body(k, &ret, prelude, block);
    let state_asserts = StateParam::asserts(k, &states);

    let mut options = match (args.retries, args.backoff) {
        (Some(retries), Some((initial, factor, max))) => quote! {
            #k::__private::StepOptions::new(#name).retries(#retries).backoff(
                #k::__private::core::time::Duration::from_millis(#initial),
                #factor,
                #k::__private::core::time::Duration::from_millis(#max),
            )
        },
        _ => quote!(#k::__private::StepOptions::new(#name)),
    };
    if args.on_interrupt == OnInterrupt::Fail {
        options.extend(quote!(.fail_if_interrupted()));
    }
    if !states.is_empty() {
        let types = StateParam::types(k, &states);
        options.extend(quote!(.state(#types)));
    }
    // The step's position is claimed, and its arguments fingerprinted, before they move
    // into the body. Each argument goes through autoref specialization: serde's view
    // of it when its type is `Serialize`, its position alone otherwise.
    let sink = Ident::new("__durable_args", Span::mixed_site());
    let fingerprint = params.iter().map(|a| {
        let name = &a.name;
        quote!((&#k::__private::Arg(&#name)).__durable_fingerprint(#sink);)
    });
    let claim = quote! {
        let __durable_claim = #k::__private::claim_step(
            &__DURABLE_STEP,
            |#sink: &mut #k::__private::Args| {
                #[allow(unused_imports)]
                use #k::__private::{ArgOpaque as _, ArgViaSerialize as _};
                #(#fingerprint)*
            },
        );
    };
    let call = if args.retries.is_some() {
        // Each attempt gets its own copy of the arguments; the clone is spanned on the
        // argument's type, so a non-`Clone` argument is reported there.
        let clones = params.iter().map(|a| {
            let name = &a.name;
            quote_spanned!(a.ty.span()=> let #name = #k::__private::Clone::clone(&#name);)
        });
        quote_spanned! {ret_span=>
            #k::__private::step_retry::<#ret, _, _>(__durable_claim, move || {
                #(#clones)*
                async move #body
            })
        }
    } else {
        quote! {
            #k::__private::step::<#ret, _>(__durable_claim, async move #body)
        }
    };
    quote! {
        #(#attrs)*
        #vis fn #ident #impl_generics (#(#inputs),*) -> #k::Step<impl #k::StepBody<Output = #ret, Attempt = impl #k::__private::core::future::Future<Output = #ret>>> #where_clause {
            static __DURABLE_STEP: #k::__private::StepOptions = #options;
            #assert_output
            #(#state_asserts)*
            #claim
            #call
        }
    }
}

pub(crate) fn workflow(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    // What the function's code is, as written (spacing and comments aside): a run kept
    // dormant by other code is replayed at the next open, not re-parked.
    let code = code_hash(&item.to_string());
    let args = WorkflowArgs::parse(args, &mut errors);
    let mut func = match parse_fn("workflow", &item) {
        Ok(f) => f,
        Err(e) => return with_item(item, &e),
    };
    crate::state::refuse(Kind::Workflow, &mut func.sig, &mut errors);
    let item = quote!(#func);
    validate::is_async(Kind::Workflow, &func.sig, &mut errors);
    validate::plain_fn(Kind::Workflow, &func.sig, &mut errors);
    validate::no_receiver(Kind::Workflow, &func.sig, &mut errors);
    validate::not_generic(&func.sig, &mut errors);
    validate::owned_arguments(Kind::Workflow, &func.sig, &mut errors);
    validate::owned_output(Kind::Workflow, &func.sig, &mut errors);
    validate::recordable_error(Kind::Workflow, &func.sig, &mut errors);
    let k = args.common.krate.clone();
    // Determinism guard rails, on the body as the user wrote it (before the branch
    // rewrite), kept apart from the signature errors: they do not stop the expansion.
    let mut guard = Errors::default();
    guard::check(&k, &mut func.block, &mut guard);
    if let Err(e) = errors.finish() {
        return with_item(item, &with_guard(e, guard));
    }

    crate::rewrite::rewrite_body(&k, &mut func.block);
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
        ..
    } = &func;
    let ident = &sig.ident;
    let name = args
        .name
        .as_ref()
        .map_or_else(|| ident.to_string(), syn::LitStr::value);
    let ret = validate::output_type(sig);
    let params = arguments(&func);
    let names: Vec<&Ident> = params.iter().map(|a| &a.name).collect();
    let tys: Vec<&Type> = params.iter().map(|a| &a.ty).collect();
    let unpack = params.iter().filter_map(Arg::unpack);
    // The body's statements, not its block: `{ x }` inside the function's own braces
    // would trip `unused_braces` on the user's code.
    let stmts = &block.stmts;
    let asserts = params
        .iter()
        .map(|a| &a.ty)
        .chain(std::iter::once(&ret))
        .map(|ty| quote_spanned!(ty.span()=> #k::__private::assert_journaled::<#ty>();));
    let boxed =
        quote_spanned!(ident.span()=> #k::__private::boxed_send(__durable_body(#(#names),*)));
    let expanded = quote! {
        #(#attrs)*
        #vis fn #ident(#(#names: #tys),*) -> #k::WorkflowCall<#ret> {
            async fn __durable_body(#(#names: #tys),*) -> #ret {
                #(#unpack)*
                #(#stmts)*
            }
            fn __durable_run(__durable_input: (#(#tys,)*)) -> #k::__private::BoxFuture<#ret> {
                let (#(#names,)*) = __durable_input;
                #boxed
            }
            static __DURABLE_WORKFLOW: #k::__private::WorkflowDef<(#(#tys,)*), #ret> =
                #k::__private::WorkflowDef::new(#name, __durable_run).code(#code);
            #k::__private::inventory::submit! {
                #k::__private::WorkflowEntry::new(&__DURABLE_WORKFLOW)
            }
            #(#asserts)*
            #k::WorkflowCall::new(&__DURABLE_WORKFLOW, (#(#names,)*))
        }
    };
    after_guard(expanded, guard)
}

pub(crate) fn branch(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = BranchArgs::parse(args, &mut errors);
    let mut func = match parse_fn("branch", &item) {
        Ok(f) => f,
        Err(e) => return with_item(item, &e),
    };
    crate::state::refuse(Kind::Branch, &mut func.sig, &mut errors);
    let item = quote!(#func);
    validate::is_async(Kind::Branch, &func.sig, &mut errors);
    validate::plain_fn(Kind::Branch, &func.sig, &mut errors);
    let k = args.common.krate.clone();
    let mut guard = Errors::default();
    guard::check(&k, &mut func.block, &mut guard);
    if let Err(e) = errors.finish() {
        return with_item(item, &with_guard(e, guard));
    }
    crate::rewrite::rewrite_body(&k, &mut func.block);
    let ret = validate::output_type(&func.sig);
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
        ..
    } = &func;
    let body = typed_body(&k, &ret, std::iter::empty(), block);
    let mut sig = sig.clone();
    sig.asyncness = None;
    sig.output = syn::parse_quote_spanned!(ret.span()=> -> impl #k::__private::core::future::Future<Output = #ret>);
    let expanded = quote! {
        #(#attrs)*
        #vis #sig {
            #k::__private::branch::<#ret, _>(async move #body)
        }
    };
    after_guard(expanded, guard)
}

/// Signature errors plus the guard's, to report them all in one build.
fn with_guard(mut e: syn::Error, guard: Errors) -> syn::Error {
    if let Err(g) = guard.finish() {
        e.combine(g);
    }
    e
}

/// The guard's errors (a clock read, an unbiased `select!`) leave the function's shape
/// intact, so the full expansion is emitted with them rather than the original item:
/// callers keep seeing a `WorkflowCall` (or a branch future) and get no follow-on type
/// errors of their own.
fn after_guard(expanded: TokenStream, guard: Errors) -> TokenStream {
    match guard.finish() {
        Ok(()) => expanded,
        Err(e) => with_item(expanded, &e),
    }
}

/// FNV-1a (64 bits) of a function's tokens as text: the same source gives the same
/// number in every build.
fn code_hash(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use quote::quote;

    fn options(args: proc_macro2::TokenStream) -> String {
        let out = super::step(
            args,
            quote!(
                async fn f() -> Result<u32, String> {
                    Ok(1)
                }
            ),
        );
        let out = out.to_string();
        let start = out.find("StepOptions").expect("the options static");
        let end = start + out[start..].find(';').expect("the end of the static");
        out[start..end].trim_end().to_string()
    }

    #[test]
    fn on_interrupt_fail_marks_the_options() {
        assert!(!options(quote!()).contains("fail_if_interrupted"));
        assert!(!options(quote!(on_interrupt = "rerun")).contains("fail_if_interrupted"));
        let failing = options(quote!(on_interrupt = "fail"));
        assert!(failing.ends_with(". fail_if_interrupted ()"), "{failing}");
        let retried = options(quote!(retries = 2, on_interrupt = "fail"));
        assert!(retried.contains(". retries (2u32)"), "{retried}");
        assert!(retried.ends_with(". fail_if_interrupted ()"), "{retried}");
    }
}
