use durable_runtime::workflow;

// Stands in for the `uuid` crate: the guard judges the path as written.
mod uuid {
    pub struct Uuid;

    impl Uuid {
        pub fn new_v4() -> Self {
            Uuid
        }
    }
}

#[workflow]
async fn order_id() -> bool {
    let _id = uuid::Uuid::new_v4();
    true
}

fn main() {}
