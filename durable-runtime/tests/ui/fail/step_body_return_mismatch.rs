use durable_runtime::step;

#[step]
async fn fetch(id: u32) -> u32 {
    if id == 0 {
        return String::from("none");
    }
    id
}

fn main() {}
