use durable_runtime::step;

struct Counter(u32);

#[step]
async fn bump(#[state] counter: &mut Counter) -> u32 {
    counter.0 += 1;
    counter.0
}

fn main() {}
