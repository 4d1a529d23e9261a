"""MQTT client pieces shared by the bridge, the device agent and the services."""
