use durable_runtime::step;

#[step]
async fn read_config(path: String) -> std::io::Result<String> {
    std::fs::read_to_string(path)
}

fn main() {}
