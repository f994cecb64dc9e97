//! The whole storage conformance suite of maas-core, on the memory backend.

maas_core::conformance_suite!(|| async { maas_store_memory::MemoryStore::new().storage() });
