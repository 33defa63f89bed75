//! Collects every independent problem in one expansion, so a user sees them all in one
//! build instead of fixing them one compile at a time.

use proc_macro2::TokenStream;

#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    pub(crate) fn push(&mut self, e: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(e),
            None => self.0 = Some(e),
        }
    }

    /// `Ok` if nothing was pushed, else every error as one.
    pub(crate) fn finish(self) -> Result<(), syn::Error> {
        self.0.map_or(Ok(()), Err)
    }
}

/// On error, emit the item unchanged plus the errors: the rest of the crate (and the
/// IDE) keeps seeing the function, so one mistake does not cascade into "cannot find
/// function" errors at every call site.
pub(crate) fn with_item(item: TokenStream, e: &syn::Error) -> TokenStream {
    let mut out = item;
    out.extend(e.to_compile_error());
    out
}
