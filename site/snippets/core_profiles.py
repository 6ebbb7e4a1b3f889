import os

import attrs

import corestore

os.makedirs("data", exist_ok=True)

# A bare name must be bound in [databases]; the binding gives the path and the profile.
events = corestore.open("events", config="corestore.toml")
assert events.profile.name == "ingest"
# the default's plugins first (on a SQLite with the WAL-reset bug also checkpoint_governor: the
# mitigation), then the profile's own
assert events.profile.plugins[:4] == ("wal_guard", "wal_invariants", "circuit_breaker", "health")
assert events.profile.plugins[-1] == "accounting"
assert events.profile.pragmas["busy_timeout"] == 10000  # from [profiles.default.pragmas]
assert events.plugin("circuit_breaker").settings.cooldown_s == 10  # the binding's override
assert events.plugin("accounting").settings.batch_size == 500
events.close()

# A path with a named profile from the same file.
bulk = corestore.open("bulk.db", profile="bulk", config="corestore.toml")
assert "wal_invariants" not in bulk.profile.plugins
assert bulk.profile.pragmas["synchronous"] == "normal"
assert bulk.profile.retry.budget_s == 30
bulk.close()

# Profiles are frozen values: derive one in code with attrs.evolve.
plain = corestore.open("plain.db")
base = plain.profile  # the built-in default, resolved for plain.db
lean = attrs.evolve(base, plugins=("wal_guard", "health"), settings={"health": {"probe_interval_s": 1}})
store = corestore.open(lean)  # another profile value: another Store (same file, same driver)
assert store is not plain and store.plugin("health").settings.probe_interval_s == 1
store.close()
plain.close()

# A mistake never half-works: an unknown setting is a ConfigError naming the key.
try:
    corestore.open(attrs.evolve(base, settings={"circuit_breaker": {"cooldown": 5}}))
except corestore.ConfigError as err:
    print(err)  # ... settings.circuit_breaker: unknown key 'cooldown'; allowed: failure_threshold, ...
else:
    raise AssertionError("an unknown setting was accepted")
