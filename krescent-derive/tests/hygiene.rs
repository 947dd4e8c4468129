//! The generated code compiles whatever the user's crate has in scope: shadowed prelude names,
//! `#![deny(unused_qualifications)]`, no implicit prelude, a renamed runtime crate, generics.

#![deny(unused_qualifications)]
#![allow(non_camel_case_types, non_upper_case_globals, dead_code)]

/// Every name the generated code must not pick up from the user's scope. (Shadowing `str` or
/// defining `__`-prefixed constants breaks serde's own derives, so it is not tried here.)
mod shadowed {
    use krescent::prelude::*;

    struct Result;
    struct Ok;
    struct Err;
    struct Option;
    struct Some;
    struct None;
    struct Box;
    struct Vec;
    struct String;
    struct From;
    struct Send;
    struct Future;
    struct bool;
    struct u32;
    const count: () = ();
    const value: () = ();
    const nested: () = ();

    #[derive(Event, Serialize, Deserialize)]
    #[event(name = "shadowed.happened")]
    pub struct Happened {
        n: u64,
    }

    #[derive(Deserialize)]
    pub struct EvolvedV2 {
        n: u64,
    }

    /// Every kind of hop, an old name and the opt-in, with the prelude shadowed.
    #[derive(Event, Serialize, Deserialize)]
    #[event(
        name = "shadowed.evolved",
        revision = 3,
        upcast(1 = json(v2_from_v1), 2 = EvolvedV2),
        old_names("shadowed.grown"),
        compatible_since = 2
    )]
    pub struct Evolved {
        n: u64,
    }

    #[allow(clippy::unnecessary_wraps)] // a JSON hop's signature
    fn v2_from_v1(
        v1: serde_json::Value,
    ) -> std::result::Result<serde_json::Value, std::string::String> {
        std::result::Result::Ok(v1)
    }

    impl std::convert::From<EvolvedV2> for Evolved {
        fn from(v2: EvolvedV2) -> Self {
            Evolved { n: v2.n }
        }
    }

    #[derive(Debug)]
    pub struct Failure;

    impl std::fmt::Display for Failure {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("failure")
        }
    }

    impl std::error::Error for Failure {}

    #[derive(EventModel, Default)]
    #[model(name = "shadowed", version = 2)]
    #[checkpoint(
        strategy = "fixed_events(10) | fixed_time(1s) | on_shutdown",
        storage = "memory",
        on_invalid = "fail"
    )]
    pub struct Model {
        #[checkpoint]
        total: u64,
        #[checkpoint]
        bytes: std::vec::Vec<u8>,
        #[checkpoint(support)]
        nested: Nested,
        #[checkpoint(support, key = "nested_2")]
        nested_again: Nested,
    }

    #[derive(EventModel, Default)]
    #[model(name = "shadowed.nested")]
    pub struct Nested {
        #[checkpoint]
        n: u64,
    }

    #[krescent::handlers]
    impl Nested {}

    #[krescent::handlers]
    impl Model {
        fn happened(&mut self, e: &Happened) {
            self.total += e.n;
        }

        async fn again(&mut self, _: &Again, _: &EventMeta) -> std::result::Result<(), Failure> {
            std::future::ready(()).await;
            self.total += 1;
            std::result::Result::Ok(())
        }

        #[on_start]
        fn start(&mut self, _: &Origin) {
            self.total = 0;
        }

        #[on_caught_up]
        fn caught_up(&mut self, _: Position) {
            self.total += 0;
        }
    }

    #[derive(Event, Serialize, Deserialize)]
    #[event(name = "shadowed.again", revision = 3)]
    pub struct Again;

    /// A group handler, with the prelude shadowed.
    #[derive(EventModel, Default)]
    #[model(name = "shadowed.grouped")]
    pub struct Grouped {
        n: usize,
    }

    #[krescent::handlers]
    impl Grouped {
        #[group(Happened, Again)]
        async fn all(&mut self, group: Group<'_>) -> std::result::Result<(), Failure> {
            std::future::ready(()).await;
            self.n += group.len();
            std::result::Result::Ok(())
        }
    }
}

/// No prelude at all: every path the generated code uses is absolute.
mod no_prelude {
    #![no_implicit_prelude]

    use ::krescent::prelude::{Deserialize, Event, EventModel, Serialize};

    #[derive(Event, Serialize, Deserialize)]
    #[event(name = "bare.happened")]
    pub struct Happened {}

    #[derive(EventModel, ::std::default::Default)]
    #[model(name = "bare")]
    #[checkpoint(strategy = "always", storage = "memory")]
    pub struct Model {
        #[checkpoint]
        seen: ::std::primitive::u64,
        #[checkpoint(key = "raw")]
        bytes: ::std::vec::Vec<::std::primitive::u8>,
    }

    #[::krescent::handlers]
    impl Model {
        fn happened(&mut self, _: &Happened) {
            self.seen += 1;
        }
    }
}

/// The runtime crate reached through another path.
mod renamed {
    mod rt {
        pub use krescent::*;
    }

    use rt::prelude::{Deserialize, Serialize};

    #[derive(rt::Event, Serialize, Deserialize)]
    #[event(name = "renamed.happened", crate = "rt")]
    pub struct Happened {}

    #[derive(rt::EventModel, Default)]
    #[model(name = "renamed", crate = "rt")]
    #[checkpoint(strategy = "manual", storage = "memory")]
    pub struct Model {
        #[checkpoint]
        seen: u64,
    }

    #[rt::handlers(crate = "rt")]
    impl Model {
        fn happened(&mut self, _: &Happened) {
            self.seen += 1;
        }
    }

    pub(super) fn name() -> &'static str {
        <Model as rt::EventModel>::NAME
    }
}

/// A generic model: the generics pass through to every impl.
mod generic {
    use krescent::prelude::*;
    use serde::de::DeserializeOwned;

    #[derive(Event, Serialize, Deserialize)]
    #[event(name = "generic.set")]
    pub struct Set {}

    #[derive(EventModel, Default)]
    #[model(name = "generic")]
    #[checkpoint(strategy = "never", storage = "memory")]
    pub struct Model<T>
    where
        T: Serialize + DeserializeOwned + Default + Send + 'static,
    {
        #[checkpoint]
        pub value: T,
    }

    #[krescent::handlers]
    impl<T> Model<T>
    where
        T: Serialize + DeserializeOwned + Default + Send + 'static,
    {
        fn set(&mut self, _: &Set) {
            self.value = T::default();
        }
    }
}

#[test]
fn the_models_are_models() {
    use krescent::{CheckpointBucket, CheckpointSupport, EventModel, Handlers};

    assert_eq!(<shadowed::Model as EventModel>::VERSION, 2);
    assert_eq!(<shadowed::Model as Handlers>::EVENTS.len(), 2);
    assert_eq!(
        <no_prelude::Model as EventModel>::FINGERPRINT,
        "seen:seen:::std::primitive::u64;raw:bytes:::std::vec::Vec<::std::primitive::u8>"
    );
    assert_eq!(renamed::name(), "renamed");

    let model = generic::Model::<String> { value: "v".into() };
    let mut bucket = CheckpointBucket::new();
    model.create_checkpoint(&mut bucket).unwrap();
    let mut restored = generic::Model::<String>::default();
    restored.restore_checkpoint(&bucket).unwrap();
    assert_eq!(restored.value, "v");
}
