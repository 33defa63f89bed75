//! `#[state]` parameters: app state a step takes from its runtime instead of from its
//! caller. They leave the step's signature (callers do not pass them, and they are not
//! fingerprinted or recorded), and the body binds them when it starts.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::visit_mut::VisitMut;
use syn::{
    FnArg, GenericArgument, GenericParam, Generics, Ident, Pat, Path, PathArguments, Signature,
    Type,
};

use crate::errors::Errors;
use crate::validate::Kind;

/// How a `#[state]` parameter holds the state.
enum Holds {
    /// `x: &T`, borrowed from the `Arc` the body keeps.
    Ref,
    /// `x: Arc<T>`.
    Arc,
}

/// One `#[state]` parameter of a step.
pub(crate) struct StateParam {
    pat: Pat,
    /// The parameter's type as written (`&T`, `Arc<T>`).
    ty: Type,
    /// The state's type, `T`.
    state: Type,
    holds: Holds,
}

fn is_state_attr(attr: &syn::Attribute) -> bool {
    attr.path().is_ident("state")
}

/// Removes the `#[state]` parameters from `sig` and returns them. A malformed one is an
/// error, and is removed too, so the rest of the expansion does not trip on it.
pub(crate) fn take(sig: &mut Signature, errors: &mut Errors) -> Vec<StateParam> {
    let mut taken = Vec::new();
    let inputs = std::mem::take(&mut sig.inputs);
    for arg in inputs {
        let FnArg::Typed(mut t) = arg else {
            sig.inputs.push(arg);
            continue;
        };
        let mut attrs = Vec::new();
        let mut is_state = false;
        for attr in std::mem::take(&mut t.attrs) {
            if is_state_attr(&attr) {
                if !matches!(attr.meta, syn::Meta::Path(_)) {
                    errors.push(syn::Error::new_spanned(
                        &attr.meta,
                        "`#[state]` takes no arguments: the parameter's type says which state it is",
                    ));
                } else if is_state {
                    errors.push(syn::Error::new_spanned(
                        &attr,
                        "`#[state]` is given twice on this parameter: once is enough",
                    ));
                }
                is_state = true;
            } else {
                attrs.push(attr);
            }
        }
        t.attrs = attrs;
        if !is_state {
            sig.inputs.push(FnArg::Typed(t));
            continue;
        }
        match state_type(&t.ty).and_then(|found| concrete(&sig.generics, &t.ty).map(|()| found)) {
            Ok((state, holds)) => taken.push(StateParam {
                pat: (*t.pat).clone(),
                ty: (*t.ty).clone(),
                state,
                holds,
            }),
            Err(e) => errors.push(e),
        }
    }
    taken
}

/// Workflows and branches take no state: a workflow's arguments are its recorded
/// input, and its code must replay the same way whatever the state is. Removes the
/// attributes, with an error at each.
pub(crate) fn refuse(kind: Kind, sig: &mut Signature, errors: &mut Errors) {
    for arg in &mut sig.inputs {
        if let FnArg::Typed(t) = arg {
            t.attrs.retain(|attr| {
                if is_state_attr(attr) {
                    errors.push(syn::Error::new_spanned(
                        attr,
                        format!(
                            "`#[state]` goes on the parameters of a `#[step]`, not of a `{}`: \
                             take the state in the steps that use it",
                            kind.attr()
                        ),
                    ));
                    false
                } else {
                    true
                }
            });
        }
    }
}

fn state_type(ty: &Type) -> syn::Result<(Type, Holds)> {
    match ty {
        Type::Group(g) => state_type(&g.elem),
        Type::Paren(p) => state_type(&p.elem),
        Type::Reference(r) if r.mutability.is_some() => Err(syn::Error::new_spanned(
            ty,
            "app state is shared by every step of every workflow: take it as `&T`, with \
             interior mutability inside (a `Mutex`, an atomic) where it must change",
        )),
        Type::Reference(r) if r.lifetime.is_some() => Err(syn::Error::new_spanned(
            ty,
            "a `#[state]` reference takes no lifetime: write `&T`; it borrows the state for \
             as long as the step's body runs",
        )),
        Type::Reference(r) => Ok(((*r.elem).clone(), Holds::Ref)),
        Type::Path(p) if p.qself.is_none() => match arc_of(&p.path) {
            Some(inner) => Ok((inner.clone(), Holds::Arc)),
            None => Err(not_a_state_type(ty)),
        },
        _ => Err(not_a_state_type(ty)),
    }
}

/// The runtime finds a state by its type, once for all calls of the step: the type
/// cannot depend on the step's generic parameters, nor be an `impl Trait`.
fn concrete(generics: &Generics, ty: &Type) -> syn::Result<()> {
    let mut finder = GenericUse {
        params: Vec::new(),
        lifetimes: Vec::new(),
        found: None,
    };
    // In an associated function, `Self` may be generic too.
    finder.params.push(Ident::new("Self", Span::call_site()));
    for param in &generics.params {
        match param {
            GenericParam::Type(t) => finder.params.push(t.ident.clone()),
            GenericParam::Const(c) => finder.params.push(c.ident.clone()),
            GenericParam::Lifetime(l) => finder.lifetimes.push(l.lifetime.ident.clone()),
        }
    }
    finder.visit_type_mut(&mut ty.clone());
    match finder.found {
        None => Ok(()),
        Some(Use::ImplTrait) => Err(syn::Error::new_spanned(
            ty,
            "a `#[state]` type cannot be an `impl Trait`: name the type given to \
             `Runtime::builder(..).state(..)`, or a `dyn Trait` if that is what was given",
        )),
        Some(Use::Param(name)) => Err(syn::Error::new_spanned(
            ty,
            format!(
                "a `#[state]` type cannot use the step's generic parameter `{name}`: the \
                 runtime finds the state by one type for every call of the step. Register \
                 the state as a trait object, `state::<dyn Trait>(..)`, and take `&dyn Trait`"
            ),
        )),
    }
}

enum Use {
    ImplTrait,
    Param(String),
}

/// Finds the first use of a generic parameter of the step, or an `impl Trait`, in a
/// type. A parameter is only ever the first segment of a path written without a
/// leading `::` or a `<T as Trait>::` (so `crate::T`, `config::N` and `Item = u64`
/// are not one), or a lifetime.
struct GenericUse {
    params: Vec<Ident>,
    lifetimes: Vec<Ident>,
    found: Option<Use>,
}

impl GenericUse {
    fn path(&mut self, qself: Option<&syn::QSelf>, path: &Path) {
        if self.found.is_some() || qself.is_some() || path.leading_colon.is_some() {
            return;
        }
        if let Some(first) = path.segments.first()
            && self.params.contains(&first.ident)
        {
            self.found = Some(Use::Param(first.ident.to_string()));
        }
    }
}

impl VisitMut for GenericUse {
    fn visit_type_path_mut(&mut self, t: &mut syn::TypePath) {
        self.path(t.qself.as_ref(), &t.path);
        syn::visit_mut::visit_type_path_mut(self, t);
    }

    fn visit_expr_path_mut(&mut self, e: &mut syn::ExprPath) {
        self.path(e.qself.as_ref(), &e.path);
        syn::visit_mut::visit_expr_path_mut(self, e);
    }

    fn visit_type_impl_trait_mut(&mut self, t: &mut syn::TypeImplTrait) {
        if self.found.is_none() {
            self.found = Some(Use::ImplTrait);
        }
        syn::visit_mut::visit_type_impl_trait_mut(self, t);
    }

    fn visit_lifetime_mut(&mut self, l: &mut syn::Lifetime) {
        if self.found.is_none() && self.lifetimes.contains(&l.ident) {
            self.found = Some(Use::Param(l.to_string()));
        }
    }
}

/// `T` of `Arc<T>` (any path ending in `Arc`).
fn arc_of(path: &Path) -> Option<&Type> {
    let last = path.segments.last()?;
    if last.ident != "Arc" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    let mut types = args.args.iter().filter_map(|a| match a {
        GenericArgument::Type(t) => Some(t),
        _ => None,
    });
    let first = types.next()?;
    types.next().is_none().then_some(first)
}

fn not_a_state_type(ty: &Type) -> syn::Error {
    syn::Error::new_spanned(
        ty,
        "a `#[state]` parameter takes the state as `&T` or `Arc<T>`, where `T` is the type \
         given to `Runtime::builder(..).state(Arc::new(..))`",
    )
}

impl StateParam {
    fn local(i: usize) -> Ident {
        format_ident!("__durable_state{}", i, span = Span::mixed_site())
    }

    /// The `StateType` each parameter lists in the step's options.
    pub(crate) fn types<'a>(k: &'a Path, params: &'a [StateParam]) -> TokenStream {
        let types = params.iter().map(|p| {
            let state = &p.state;
            quote_spanned!(state.span()=> #k::__private::StateType::of::<#state>())
        });
        quote!(&[#(#types),*])
    }

    /// Compile-time checks that each state type can be shared, spanned on the type.
    pub(crate) fn asserts<'a>(
        k: &'a Path,
        params: &'a [StateParam],
    ) -> impl Iterator<Item = TokenStream> + 'a {
        params.iter().map(move |p| {
            let state = &p.state;
            quote_spanned!(state.span()=> #k::__private::assert_state::<#state>();)
        })
    }

    /// The statements that bind each parameter when the body starts.
    pub(crate) fn bindings<'a>(
        k: &'a Path,
        step: &'a str,
        params: &'a [StateParam],
    ) -> impl Iterator<Item = TokenStream> + 'a {
        params.iter().enumerate().map(move |(i, p)| {
            let (pat, ty, state) = (&p.pat, &p.ty, &p.state);
            let local = Self::local(i);
            let fetch = quote!(#k::__private::injected::<#state>(#step));
            match p.holds {
                Holds::Arc => quote!(let #pat: #ty = #fetch;),
                Holds::Ref => quote! {
                    let #local = #fetch;
                    let #pat: #ty = &*#local;
                },
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error `take` gives for the step `item`, if any.
    fn errors_of(item: &str) -> Vec<String> {
        let mut f: syn::ItemFn = syn::parse_str(item).expect("a function");
        let mut errors = Errors::default();
        let _ = take(&mut f.sig, &mut errors);
        match errors.finish() {
            Ok(()) => Vec::new(),
            Err(e) => e.into_iter().map(|e| e.to_string()).collect(),
        }
    }

    #[test]
    fn a_state_type_of_the_step_s_generic_parameters_is_refused() {
        for item in [
            "async fn a<T>(#[state] x: &T) {}",
            "async fn a<T: Send>(#[state] x: Arc<Vec<T>>) {}",
            "async fn a<T>(#[state] x: &T::Assoc) {}",
            "async fn a<T>(#[state] x: &<T as Tr>::Assoc) {}",
            "async fn a<const N: usize>(#[state] x: &[u8; N]) {}",
            "async fn a<'a>(#[state] x: Arc<dyn Tr<'a>>) {}",
            "async fn a(#[state] x: &Self) {}",
        ] {
            let errors = errors_of(item);
            assert!(
                errors.len() == 1 && errors[0].contains("generic parameter"),
                "{item}: {errors:?}"
            );
        }
        let errors = errors_of("async fn a(#[state] x: &impl Tr) {}");
        assert!(errors[0].contains("impl Trait"), "{errors:?}");
    }

    #[test]
    fn a_concrete_state_type_is_taken_whatever_its_names() {
        for item in [
            "async fn a<T>(#[state] x: &crate::T, v: T) {}",
            "async fn a<T>(#[state] x: &::m::T, v: T) {}",
            "async fn a<Item>(#[state] x: &dyn Source<Item = u64>, v: Vec<Item>) {}",
            "async fn a<Item>(#[state] x: &<Foo as Iterator>::Item, v: Item) {}",
            "async fn a<const N: usize>(#[state] x: &[u8; config::N]) {}",
            "async fn a<'a>(#[state] x: Arc<dyn Tr<'static>>, v: &'a str) {}",
            "async fn a<T>(#[state] x: &Db, v: T) {}",
        ] {
            assert_eq!(errors_of(item), Vec::<String>::new(), "{item}");
        }
    }
}
