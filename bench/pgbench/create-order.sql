-- The create-order transaction of bench/reference/sql.ts (the service's SQL)
-- as a pgbench script, run with -M extended. pgbench variables are numbers,
-- so the per-order values are built in SQL from a random :n (ids, key,
-- token) and two products :p1, :p2 (one from each half of the catalogue,
-- as in bench/sql-baseline.ts); -D gives :scope, :customer_id and
-- :fingerprint. Otherwise the statements are those the service sends.
\set n random(1, 9000000000000000000)
\set p1 random(1000, 1499)
\set p2 random(1500, 1999)
INSERT INTO idempotency_keys
  (scope, key, command_type, fingerprint, state, token, lease_expires_at, expires_at)
VALUES (:scope, 'pgbench-' || :n::text, 'CreateOrder', :fingerprint,
  'in_flight', md5('token' || :n::text)::uuid, now() + make_interval(secs => 60),
  now() + make_interval(secs => 86400))
ON CONFLICT (scope, key) DO UPDATE SET
  command_type = EXCLUDED.command_type, fingerprint = EXCLUDED.fingerprint,
  state = 'in_flight', token = EXCLUDED.token, result = NULL,
  lease_expires_at = EXCLUDED.lease_expires_at, expires_at = EXCLUDED.expires_at
WHERE idempotency_keys.expires_at <= now()
   OR (idempotency_keys.state = 'in_flight' AND idempotency_keys.lease_expires_at <= now())
RETURNING true AS claimed;
BEGIN;
WITH requested AS (
  SELECT product_id, quantity FROM unnest(ARRAY['sku-' || :p1::text, 'sku-' || :p2::text], ARRAY[1, 1])
    AS r(product_id, quantity)
), locked AS (
  SELECT i.product_id FROM inventory AS i
  WHERE i.product_id = ANY(ARRAY['sku-' || :p1::text, 'sku-' || :p2::text])
  ORDER BY i.product_id FOR UPDATE
)
UPDATE inventory AS i SET available = i.available - r.quantity, updated_at = now()
FROM locked AS l JOIN requested AS r USING (product_id)
WHERE i.product_id = l.product_id AND i.available >= r.quantity
RETURNING i.product_id;
INSERT INTO orders (id, customer_id, user_id, status, version, items, shipping_address, created_at,
  updated_at, cancel_reason)
VALUES (md5('order' || :n::text)::uuid, :customer_id, :scope, 'created', 1,
  format('[{"productId": "sku-%s", "quantity": 1}, {"productId": "sku-%s", "quantity": 1}]', :p1::int, :p2::int)::jsonb,
  '{"line1": "1 Bench Street", "city": "Lyon", "postalCode": "69001", "country": "FR"}'::jsonb,
  now(), now(),
  NULL)
ON CONFLICT (id) DO NOTHING
RETURNING 1 AS inserted;
INSERT INTO outbox (event_id, event_type, aggregate_type, aggregate_id, aggregate_version, payload,
  correlation_id, causation_id, occurred_at)
SELECT event_id, event_type, aggregate_type, aggregate_id, aggregate_version, payload,
  correlation_id, causation_id, occurred_at
FROM jsonb_to_recordset(format('[{"event_id": "%1$s", "event_type": "OrderCreated", "aggregate_type": "Order", "aggregate_id": "%2$s", "aggregate_version": 1, "payload": {"_tag": "OrderCreated", "orderId": "%2$s", "customerId": "%3$s", "userId": "%4$s", "items": [{"productId": "sku-%5$s", "quantity": 1}, {"productId": "sku-%6$s", "quantity": 1}], "shippingAddress": {"line1": "1 Bench Street", "city": "Lyon", "postalCode": "69001", "country": "FR"}}, "correlation_id": "%7$s", "causation_id": "%2$s", "occurred_at": "%8$s"}]',
  md5('event' || :n::text)::uuid, md5('order' || :n::text)::uuid, :customer_id::text, :scope::text, :p1::int, :p2::int,
  md5('correlation' || :n::text)::uuid, now())::jsonb) AS x(event_id uuid, event_type text, aggregate_type text, aggregate_id text,
  aggregate_version integer, payload jsonb, correlation_id text, causation_id text,
  occurred_at timestamptz);
UPDATE idempotency_keys
SET state = 'completed', result = format('{"status": 201, "body": {"order_id": "%s", "status": "created"}}',
    md5('order' || :n::text)::uuid)::jsonb, lease_expires_at = NULL,
    expires_at = now() + make_interval(secs => 86400)
WHERE scope = :scope AND key = 'pgbench-' || :n::text AND token = md5('token' || :n::text)::uuid
  AND state = 'in_flight'
RETURNING true AS ok;
COMMIT;
