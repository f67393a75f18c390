/** An ottochain address: a string the chain has validated, not any string. */
export type Address = string & { readonly __brand: "Address" };

/** What a client of the ottochain services offers. */
export interface Client {
  version(): Promise<{ commit: string; sdk_version: string }>;
  types(): Promise<TypeName[]>;
}
