"""The Redis Lua scripts, shipped as package data of ratelimit_service (ratelimit_service.lua)."""
