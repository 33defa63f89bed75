use durable_runtime::workflow;

#[workflow]
async fn greet(name: &str) -> String {
    format!("hello {name}")
}

fn main() {}
