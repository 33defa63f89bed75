//! Signature rules, one function per rule, each with the reason it exists.

use syn::spanned::Spanned;
use syn::{FnArg, GenericArgument, GenericParam, PathArguments, ReturnType, Signature, Type};

use crate::errors::Errors;

/// Which attribute is checking, for messages.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Step,
    Workflow,
    Branch,
}

impl Kind {
    pub(crate) fn attr(self) -> &'static str {
        match self {
            Kind::Step => "#[step]",
            Kind::Workflow => "#[workflow]",
            Kind::Branch => "#[branch]",
        }
    }
}

/// The body of every kind is turned into a future that is created when the function is
/// called; that needs an `async fn` to start from.
pub(crate) fn is_async(kind: Kind, sig: &Signature, errors: &mut Errors) {
    if sig.asyncness.is_none() {
        errors.push(syn::Error::new(
            sig.fn_token.span,
            format!(
                "`{}` goes on an `async fn`; add `async` before `fn`",
                kind.attr()
            ),
        ));
    }
}

/// `const`, `unsafe` and `extern` functions cannot become the plain function that claims
/// a step id and returns a future.
pub(crate) fn plain_fn(kind: Kind, sig: &Signature, errors: &mut Errors) {
    if let Some(c) = &sig.constness {
        errors.push(syn::Error::new(
            c.span,
            format!("`{}` cannot be a `const fn`", kind.attr()),
        ));
    }
    if let syn::Safety::Unsafe(u) = &sig.safety {
        errors.push(syn::Error::new(
            u.span(),
            format!("`{}` cannot be an `unsafe fn`", kind.attr()),
        ));
    }
    if let Some(abi) = &sig.abi {
        errors.push(syn::Error::new_spanned(
            abi,
            format!("`{}` cannot have an ABI", kind.attr()),
        ));
    }
    if let Some(v) = &sig.variadic {
        errors.push(syn::Error::new_spanned(
            v,
            format!("`{}` cannot be variadic", kind.attr()),
        ));
    }
}

/// Steps and workflows are free functions: a step's future may outlive its caller
/// (`tokio::spawn`) and a workflow is re-run from its recorded input alone, so neither
/// can borrow an object.
pub(crate) fn no_receiver(kind: Kind, sig: &Signature, errors: &mut Errors) {
    if let Some(r) = sig.receiver() {
        let message = match kind {
            Kind::Step => {
                "`#[step]` cannot take `self`; make it a free function and pass what it needs as owned arguments (for example an `Arc` of a client)"
            }
            _ => {
                "`#[workflow]` cannot take `self`: a workflow is re-run from its recorded input alone; make it a free function"
            }
        };
        errors.push(syn::Error::new(r.self_token.span, message));
    }
}

/// A workflow is found by name when the journal is recovered, and its input is decoded
/// into one concrete type: it cannot be generic.
pub(crate) fn not_generic(sig: &Signature, errors: &mut Errors) {
    for p in &sig.generics.params {
        let what = match p {
            GenericParam::Lifetime(_) => "lifetime",
            GenericParam::Type(_) => "type",
            GenericParam::Const(_) => "const",
        };
        errors.push(syn::Error::new_spanned(
            p,
            format!("`#[workflow]` cannot have {what} parameters: recovery decodes its recorded input into one concrete type"),
        ));
    }
    for arg in &sig.inputs {
        if let FnArg::Typed(t) = arg
            && let Type::ImplTrait(i) = &*t.ty
        {
            errors.push(syn::Error::new_spanned(
                    i,
                    "`#[workflow]` arguments need concrete types, not `impl Trait`: recovery decodes the recorded input into them",
                ));
        }
    }
}

/// Step and workflow arguments must be owned: a step future is `'static` so it can be
/// spawned and retried, and a workflow's input is decoded from the journal.
pub(crate) fn owned_arguments(kind: Kind, sig: &Signature, errors: &mut Errors) {
    for arg in &sig.inputs {
        if let FnArg::Typed(t) = arg
            && let Some(r) = find_reference(&t.ty, true)
        {
            let message = match kind {
                Kind::Step => {
                    "`#[step]` arguments must be owned (`String`, not `&str`): the step's future may outlive the caller (`tokio::spawn`) and is re-run on retry"
                }
                _ => {
                    "`#[workflow]` arguments must be owned (`String`, not `&str`): the workflow's input is recorded and decoded again on recovery"
                }
            };
            errors.push(syn::Error::new(r, message));
        }
    }
}

/// Outputs are decoded from the journal on replay, into an owned value: a reference,
/// even `&'static str`, cannot be produced that way.
pub(crate) fn owned_output(kind: Kind, sig: &Signature, errors: &mut Errors) {
    if let ReturnType::Type(_, ty) = &sig.output
        && let Some(r) = find_reference(ty, false)
    {
        errors.push(syn::Error::new(
            r,
            format!(
                "`{}` must return an owned type (`String`, not `&str`): its output is recorded and decoded again on replay",
                kind.attr()
            ),
        ));
    }
}

/// The span of the first reference in `ty`, skipping `&'static` ones when `allow_static`
/// is set, or of the first non-`'static` lifetime argument (`Cow<'static, str>` is owned
/// either way).
fn find_reference(ty: &Type, allow_static: bool) -> Option<proc_macro2::Span> {
    let is_static = |l: &syn::Lifetime| allow_static && l.ident == "static";
    let find = |t: &Type| find_reference(t, allow_static);
    match ty {
        Type::Reference(r) => match &r.lifetime {
            Some(l) if is_static(l) => find(&r.elem),
            _ => Some(r.and_token.span),
        },
        Type::Paren(p) => find(&p.elem),
        Type::Group(g) => find(&g.elem),
        Type::Slice(s) => find(&s.elem),
        Type::Array(a) => find(&a.elem),
        Type::Tuple(t) => t.elems.iter().find_map(find),
        Type::Path(p) => p.path.segments.iter().find_map(|s| match &s.arguments {
            PathArguments::AngleBracketed(a) => a.args.iter().find_map(|g| match g {
                GenericArgument::Type(t) => find(t),
                GenericArgument::Lifetime(l) if l.ident != "static" => Some(l.span()),
                _ => None,
            }),
            _ => None,
        }),
        _ => None,
    }
}

/// The declared output type, `()` when there is none.
pub(crate) fn output_type(sig: &Signature) -> Type {
    match &sig.output {
        ReturnType::Default => syn::parse_quote_spanned!(sig.paren_token.span.close() => ()),
        ReturnType::Type(_, t) => (**t).clone(),
    }
}

/// Error types that serde cannot record, which users reach for first in a step: said in
/// one line, at the type, instead of a page of unsatisfied serde bounds at every use.
/// The check goes by the path as written (an alias gets through, to serde's message).
pub(crate) fn recordable_error(kind: Kind, sig: &Signature, errors: &mut Errors) {
    let ReturnType::Type(_, ty) = &sig.output else {
        return;
    };
    if let Some((ty, name)) = unrecordable(ty) {
        errors.push(syn::Error::new_spanned(
            ty,
            format!(
                "`{name}` cannot be recorded in the journal: a {}'s `Err` is replayed like its \
                 `Ok`, so it must be a serde type; return `Result<_, durable_runtime::StepError>` \
                 (`?` converts any `std::error::Error` into it; for `anyhow::Error`, \
                 `.map_err(|e| StepError::new(&*e))`) or an error type that derives `Serialize` \
                 and `Deserialize`",
                match kind {
                    Kind::Workflow => "workflow",
                    _ => "step",
                }
            ),
        ));
    }
}

/// The first unrecordable error type in `ty` (the error of a `Result`, or the output
/// itself), with its name as the message gives it. Only the spellings of the real types
/// count (`anyhow::Error`, `std::io::Error` or `io::Error`, `eyre::Report`, their
/// `Result` aliases, and `Box<dyn Error>`), so a serde type of one's own named `Error`
/// in another module, or a serializable `Box<dyn Trait>`, is left to serde.
fn unrecordable(ty: &Type) -> Option<(&Type, String)> {
    let Type::Path(p) = ty else {
        return None;
    };
    let segments: Vec<String> = p
        .path
        .segments
        .iter()
        .map(|s| s.ident.to_string())
        .collect();
    let last = p.path.segments.last()?;
    let path: Vec<&str> = segments.iter().map(String::as_str).collect();
    match path.as_slice() {
        ["anyhow", "Error"] | ["eyre", "Report"] | ["io", "Error"] | ["std", "io", "Error"] => {
            return Some((ty, path[path.len() - 2..].join("::")));
        }
        ["anyhow" | "eyre", "Result"] => return Some((ty, format!("{}::Error", path[0]))),
        ["io", "Result"] | ["std", "io", "Result"] => return Some((ty, "io::Error".to_owned())),
        ["Box"] => {
            if let PathArguments::AngleBracketed(a) = &last.arguments
                && let Some(GenericArgument::Type(Type::TraitObject(t))) = a.args.first()
                && t.bounds.iter().any(|b| {
                    matches!(b, syn::TypeParamBound::Trait(t)
                        if t.path.segments.last().is_some_and(|s| s.ident == "Error"))
                })
            {
                return Some((ty, "Box<dyn Error>".to_owned()));
            }
            return None;
        }
        _ => {}
    }
    // `Result<T, E>`: look at `E`.
    if last.ident == "Result"
        && let PathArguments::AngleBracketed(a) = &last.arguments
        && let Some(GenericArgument::Type(e)) = a.args.iter().nth(1)
    {
        return unrecordable(e);
    }
    None
}
