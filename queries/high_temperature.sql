-- description: Machines running hot: Fahrenheit reading and location of every reading over 85 °C.
-- action: {"republish": {"topic": "alerts/${topic(3)}/high-temperature"}}
-- action: {"object_store": {"format": "jsonl", "max_age": "10s"}}
SELECT
    thingName() AS deviceIdentifier,
    currentAmbientTemperature AS celsiusReading,
    (currentAmbientTemperature * 1.8 + 32) AS fahrenheitReading,
    geoCoordinates.latitude AS lat,
    geoCoordinates.longitude AS lon
FROM 'enterprise/facilities/+/metrics'
WHERE currentAmbientTemperature > 85.0
