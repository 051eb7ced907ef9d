/* io_safetensors.c — placeholder until the safetensors reader/writer lands. */
