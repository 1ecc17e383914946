-- description: Every reading, with its plant, to Kafka (one record per reading, keyed by plant).
-- action: {"kafka": {"connection": "events", "topic": "telemetry", "key": "${topic(3)}"}}
-- test: {"topic": "enterprise/facilities/plant-01/metrics", "payload": {"currentAmbientTemperature": 21.5}, "expect": [{"plant": "plant-01", "celsius": 21.5}]}
SELECT topic(3) AS plant, currentAmbientTemperature AS celsius
FROM 'enterprise/facilities/+/metrics'
