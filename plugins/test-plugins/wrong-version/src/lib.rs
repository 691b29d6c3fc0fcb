//! Hostile test plugin: a miner built against `concepts:plugin@9.0.0`, a version no host supports.
//!
//! It uses `wit-bindgen` directly (not the SDK, which only knows released versions). On the host
//! target it is empty.

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({
        inline: "
            package concepts:plugin@9.0.0;

            interface miner {
                mine: func(seed: u64) -> result<list<u32>, string>;
            }

            world negative-miner {
                export miner;
            }
        ",
        world: "negative-miner",
    });

    struct FutureMiner;

    impl exports::concepts::plugin::miner::Guest for FutureMiner {
        fn mine(seed: u64) -> Result<Vec<u32>, String> {
            Ok(vec![seed as u32])
        }
    }

    export!(FutureMiner);
}
