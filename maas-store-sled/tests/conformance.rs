//! The whole storage conformance suite of maas-core, on the sled backend.

maas_core::conformance_suite!(|| async {
    maas_store_sled::SledStore::temporary()
        .expect("a temporary sled database")
        .storage()
});
