-- description: Every reading, as Parquet, to the object store, partitioned by plant.
-- action: {"object_store": {"connection": "lake", "path": "plant=${topic(3)}/", "format": "parquet", "max_age": "60s"}}
SELECT timestamp() AS received_ms, topic(3) AS plant, currentAmbientTemperature AS celsius, geoCoordinates.latitude AS lat, geoCoordinates.longitude AS lon
FROM 'enterprise/facilities/+/metrics'
