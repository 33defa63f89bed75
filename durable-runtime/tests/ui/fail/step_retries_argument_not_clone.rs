use durable_runtime::step;

struct Card {
    number: String,
}

#[step(retries = 3)]
async fn charge(card: Card) -> Result<String, String> {
    Ok(card.number)
}

fn main() {}
