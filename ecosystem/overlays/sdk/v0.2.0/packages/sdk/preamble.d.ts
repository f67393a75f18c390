/** ottochain's data types. */
