-- The store's search index, projected from the tb_store KV bucket (threadbus.read_model.store_index).
create extension if not exists vector;

-- The stream sequence of the bucket's last message applied, written in the same transaction as
-- the rows it produced: one row.
create table store_index_position (
    singleton boolean primary key default true check (singleton),
    position bigint not null
);
insert into store_index_position (position) values (0);

-- Labels compare as code points (collation "C"), as Python sorts tuples of str: namespace
-- listing pages in LangGraph's order straight from the index.
create table store_items (
    kv_key text collate "C" primary key,
    namespace text[] collate "C" not null,
    key text not null,
    value jsonb not null,
    created_at timestamptz not null,
    updated_at timestamptz not null,
    expires_at timestamptz,
    seq bigint not null
);
create index store_items_by_namespace on store_items (namespace, updated_at desc);
create index store_items_updated_at on store_items (updated_at desc);

-- One embedding per indexed field of an item (`fields`, or the put's own list); the vector's
-- dimension is the configured `dims`, checked when written.
create table store_vectors (
    kv_key text collate "C" not null references store_items on delete cascade,
    field text not null,
    embedding vector not null,
    primary key (kv_key, field)
);

-- Every namespace holding at least one item, with how many: namespace listing reads this.
create table store_namespaces (
    namespace text[] collate "C" primary key,
    items integer not null
);
