-- A projector's batch starts by moving the position from where that projector last left it.
-- When another projector applied a batch meanwhile (two of them during a hand-over), the move
-- fails, and with it the batch's whole transaction: the batch was computed from thread rows the
-- other projector has changed since. The failing projector reads the rows again and retries.
create function advance_projection(projection_name text, expected_position bigint, new_position bigint) returns void
language plpgsql as $$
begin
    if expected_position = 0 then
        insert into projection_positions (projection, position) values (projection_name, 0) on conflict do nothing;
    end if;
    update projection_positions set position = new_position
        where projection = projection_name and position = expected_position;
    if not found then
        raise exception 'projection % is no longer at position %', projection_name, expected_position
            using errcode = 'serialization_failure';
    end if;
end
$$;
