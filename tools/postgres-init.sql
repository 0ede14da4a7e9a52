-- One database per service (compose.yaml mounts this into /docker-entrypoint-initdb.d).
-- The postgres image runs it once, as POSTGRES_USER, when the data volume is empty;
-- that user owns the databases. "order" and "user" are reserved words, hence the quotes.
CREATE DATABASE "order";
CREATE DATABASE "inventory";
CREATE DATABASE "product";
CREATE DATABASE "user";
