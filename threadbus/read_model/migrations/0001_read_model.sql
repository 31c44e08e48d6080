-- Threads, runs and the checkpoint index, projected from the thread log. No foreign keys: the
-- projector writes a batch of events in log order, and a thread's row is written at the end of it.

-- How far a projection has applied its log: the stream sequence of the last event applied,
-- written in the same transaction as the rows it produced.
create table projection_positions (
    projection text primary key,
    position bigint not null
);

create table threads (
    thread_id text primary key,
    created_at timestamptz not null,
    updated_at timestamptz not null,
    state_updated_at timestamptz not null,
    metadata jsonb not null default '{}',
    status text not null,
    "values" jsonb,
    interrupts jsonb not null default '{}',
    error jsonb,
    -- The thread's fold (threadbus.thread_state.ThreadState, without run statuses) after the
    -- event at log_seq: a reader that must see newer events folds only what follows.
    fold jsonb not null,
    log_seq bigint not null
);
create index threads_metadata on threads using gin (metadata jsonb_path_ops);
create index threads_values on threads using gin ("values" jsonb_path_ops);
create index threads_status on threads (status, updated_at);
create index threads_updated_at on threads (updated_at);
create index threads_created_at on threads (created_at);

create table runs (
    run_id text primary key,
    thread_id text not null,
    assistant_id text not null,
    created_at timestamptz not null,
    updated_at timestamptz not null,
    status text not null,
    metadata jsonb not null default '{}',
    multitask_strategy text not null,
    kwargs jsonb not null
);
create index runs_by_thread on runs (thread_id, created_at desc);

create table checkpoints (
    thread_id text not null,
    checkpoint_ns text not null,
    checkpoint_id text not null,
    run_id text,
    parent_checkpoint_id text,
    metadata jsonb,
    seq bigint not null,
    primary key (thread_id, checkpoint_ns, checkpoint_id)
);
create index checkpoints_latest on checkpoints (thread_id, checkpoint_ns, seq desc);
create index checkpoints_by_run on checkpoints (run_id);
