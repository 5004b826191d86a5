// `embed_migrations!` reads schema/migrations at compile time; cargo must rebuild this crate
// when a migration is added or edited.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
