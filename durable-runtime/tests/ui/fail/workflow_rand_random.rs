use durable_runtime::workflow;

// Stands in for the `rand` crate: the guard judges the path as written.
mod rand {
    pub fn random<T: Default>() -> T {
        T::default()
    }
}

#[workflow]
async fn coin_flip() -> bool {
    rand::random::<bool>()
}

fn main() {}
