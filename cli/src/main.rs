fn main() {
    eprintln!("weftctl: not built yet");
    std::process::exit(2);
}
