/** An ottochain address: a string the chain has validated, not any string. */
export type Address = string & { readonly __brand: "Address" };
