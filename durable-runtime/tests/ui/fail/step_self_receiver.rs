use durable_runtime::step;

struct Client;

impl Client {
    #[step]
    async fn fetch(&self, id: u32) -> u32 {
        id
    }
}

fn main() {}
