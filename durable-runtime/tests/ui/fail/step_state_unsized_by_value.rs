use durable_runtime::step;

#[step]
async fn greet(#[state] greeting: str) -> String {
    greeting.to_owned()
}

fn main() {}
