-- Why a key was revoked, when keygate revoked it itself (for example: sent over plain HTTP).
ALTER TABLE api_keys ADD COLUMN revoked_reason TEXT;
