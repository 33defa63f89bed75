use durable_runtime::step;

#[step]
async fn greet(name: &str) -> String {
    format!("hello {name}")
}

fn main() {}
